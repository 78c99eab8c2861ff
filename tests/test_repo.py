"""The repository itself: notebooks in lecture order and committed clean, dependencies declared once,
each public name of d2l_ext defined once, and the pre-commit hooks."""

import ast
import graphlib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
import yaml
from d2l import torch as d2l
from repo_scripts import script

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / "d2l_ext").glob("*.py"))
export = script("tools/export.py")
course_site = script("tools/site.py", "course_site")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's


def names(requirements) -> set[str]:
    """Normalized distribution names of requirement strings (PEP 503), options and paths dropped."""
    out = set()
    for req in requirements:
        req = req.split("#")[0].strip()
        if not req or req.startswith(("-", ".", "/")):
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0)
        name = re.sub(r"[-_.]+", "-", name).lower()
        out.add(CONDA_NAMES.get(name, name))
    return out


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_notebooks_are_the_lecture_in_order():
    numbers = [Path(nb).name[:2] for nb in course_site.chapters()]  # SiteError unless toc and folder agree
    assert numbers == [f"{i:02d}" for i in range(len(NOTEBOOKS))]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_with_its_title_and_preset(nb):
    notebook = json.loads(nb.read_text())
    cells = notebook["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{nb.name}: cells {dirty} have outputs; run `make format` (nbstripout) first"
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith(f"# {nb.stem[:2]} ")
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "current_preset()" in code or "experiment(" in code
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_dependencies_are_declared_once_and_d2l_without_its_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python=", "pip"))]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = names(pyproject()["dependencies"]) | names(pyproject()["optional-dependencies"]["lab"])
    assert names(conda) == declared
    assert "-e ." in pip and "conda-forge" in env["channels"]
    assert any(d.startswith("pytorch") and "cpu" in d for d in conda)  # the CPU build
    assert "d2l" not in declared
    assert "--no-deps d2l==1.0.3" in (ROOT / "README.md").read_text()
    assert 'D2L_SPEC="d2l==1.0.3"' in (ROOT / "tools" / "setup.sh").read_text()
    assert "--no-deps" in (ROOT / "binder" / "postBuild").read_text()


def test_each_public_name_is_defined_in_one_module():
    """d2l's own library lets a later definition silently replace an earlier one; ours may not. A
    function that ``add_to_class(C)`` attaches elsewhere counts as ``C.name``."""
    where = defaultdict(list)
    for module in MODULES:
        for node in ast.parse(module.read_text()).body:
            if cls := export.add_to_class_target(node):
                where[f"{cls}.{node.name}"].append(module.name)
            for name in export.bound_names(node):
                if not name.startswith("_"):
                    where[name].append(module.name)
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, (
        "defined in more than one module of d2l_ext; keep one, import it elsewhere:\n"
        + "\n".join(f"  {name}: {', '.join(paths)}" for name, paths in sorted(twice.items()))
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_all_names_what_the_module_defines(module):
    assert "__all__" in module.read_text(), f"{module.name}: give it an __all__ of its public names"
    mod = importlib.import_module(f"d2l_ext.{module.stem}")
    assert len(mod.__all__) == len(set(mod.__all__)), f"{module.name}: a name twice in __all__"
    missing = [n for n in mod.__all__ if getattr(mod, n, None) is None]
    assert not missing, f"{module.name}: __all__ names {missing}, which the module does not define"


# The lesson modules, generated from the notebooks' #@save cells, in lecture order.
GENERATED = [
    m.stem for m in (ROOT / "d2l_ext" / f"{nb.stem[3:]}.py" for nb in NOTEBOOKS) if export.is_generated(m)
]


def internal_imports(module: Path) -> tuple[set[str], list[str]]:
    """The modules of d2l_ext that ``module`` imports wherever the import sits (``__init__`` for the
    package itself), and the imports inside a function."""
    tree = ast.parse(module.read_text())
    graph_names = {m.stem for m in MODULES}
    found, nested = set(), []
    for fn in [None, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
        for node in ast.walk(fn or tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "d2l_ext":
                # ``from d2l_ext import data`` imports the module data; ``from d2l_ext import fit``, __init__
                names = {a.name if a.name in graph_names else "__init__" for a in node.names}
                targets = {node.module.partition(".")[2]} if "." in node.module else names
                if fn is None:
                    found |= targets
                else:
                    nested.append(f"{module.stem}.{fn.name} imports {node.module}")
    return found - {module.stem}, nested


def test_the_library_imports_in_at_most_four_levels_without_a_circle():
    """Each module imports only modules below it, lesson modules only earlier lesson modules."""
    graph, nested = {}, []
    for module in MODULES:
        graph[module.stem], inside = internal_imports(module)
        nested += inside
    assert not nested, "an import inside a function hides a circle; import at the top:\n" + "\n".join(nested)
    level: dict[str, int] = {}
    for name in graphlib.TopologicalSorter(graph).static_order():  # CycleError names a circle
        level[name] = 1 + max((level[dep] for dep in graph[name]), default=0)
    assert max(level.values()) <= 4, f"too many levels: {sorted(level.items(), key=lambda kv: kv[1])}"
    for i, lesson in enumerate(GENERATED):
        assert graph[lesson] <= set(GENERATED[:i]), (
            f"{lesson} imports {graph[lesson]}: lesson modules import only earlier ones"
        )


def code_lines(cls) -> int:
    """Lines of ``cls`` without docstrings, blank and comment-only lines; a wrapped statement counts
    each line."""
    source = textwrap.dedent(inspect.getsource(cls))
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and ast.get_docstring(node) is not None:
            docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    lines = enumerate(source.splitlines(), start=1)
    return sum(1 for i, line in lines if i not in docstrings and line.strip()[:1] not in ("", "#"))


# The book's BatchNorm is not in its library (d2l/torch.py): 19 lines of its class in d2l-en at tag
# v1.0.3, chapter_convolutional-modern/batch-norm.md (PyTorch tab), counted as code_lines counts.
@pytest.mark.parametrize(
    "ours, book",
    [("batch_norm.BatchNorm", 19), ("resnet.Residual", "Residual"), ("resnext.ResNeXtBlock", "ResNeXtBlock")],
    ids=["BatchNorm", "Residual", "ResNeXtBlock"],
)
def test_a_lesson_class_has_at_most_one_and_a_half_times_the_books_lines(ours, book):
    module, name = ours.split(".")
    cls = getattr(importlib.import_module(f"d2l_ext.{module}"), name)
    limit = 1.5 * (book if isinstance(book, int) else code_lines(getattr(d2l, book)))
    assert code_lines(cls) <= limit, f"{name}: {code_lines(cls)} lines of code, at most {limit:g}"


PRE_COMMIT = Path(sys.executable).with_name("pre-commit")
HOOKS = ("nbstripout", "ruff-check", "ruff-format", "export-check", "slides-check")


def test_pre_commit_runs_ruff_nbstripout_and_the_export_check():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert all(repo["repo"] == "local" for repo in config["repos"])  # nothing fetched at commit time
    found = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert "--keep-id" in found["nbstripout"]["entry"]  # the cell ids name the cells: keep them
    assert found["export-check"]["entry"].endswith("tools/export.py --check")
    assert found["export-check"]["pass_filenames"] is False  # it checks every notebook, not the staged
    for hook in found.values():
        tool = ROOT / hook["entry"].split()[0]
        assert os.access(tool, os.X_OK), f"hook {hook['id']}: {tool} is missing; run `make setup`"
    assert "pre-commit" in names(pyproject()["optional-dependencies"]["test"])


def test_pre_commit_fixes_and_blocks_a_bad_commit(tmp_path):
    """The real hooks on a scratch repository: each of them catches its fault; once fixed, they pass."""
    assert PRE_COMMIT.exists(), f"{PRE_COMMIT} is missing: install the test tools with `make setup`"
    for name in (".pre-commit-config.yaml", "pyproject.toml", "tools/export.py", "tools/slides.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the hooks call .venv/bin/...: the tools running this
    (tmp_path / ".gitignore").write_text(".venv\n")
    (tmp_path / "d2l_ext").mkdir()
    (tmp_path / "bad.py").write_text("import os\nx=1\n")
    output = nbformat.v4.new_output("execute_result", {"text/plain": "1"}, execution_count=1)
    saved = nbformat.v4.new_code_cell(
        "def f(x):  # @save\n    return x\n\n\nf(1)", execution_count=1, outputs=[output]
    )
    (tmp_path / "notebooks").mkdir()
    nb = tmp_path / "notebooks" / "07_toy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 07 · Toy"), saved]), nb)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    run("git", "init", "-q")
    run("git", "add", "-A")
    first = run(str(PRE_COMMIT), "run", "--all-files")
    assert first.returncode == 1
    for hook in HOOKS:
        assert f"hook id: {hook}" in first.stdout, f"{hook} did not fail:\n{first.stdout}"
    assert (tmp_path / "bad.py").read_text() == "x = 1\n"  # unused import removed, then formatted
    assert not any(c.get("outputs") for c in json.loads(nb.read_text())["cells"])
    assert run(sys.executable, "tools/export.py").returncode == 0
    assert run(sys.executable, "tools/slides.py").returncode == 0  # writes the slide metadata
    run("git", "add", "-A")
    second = run(str(PRE_COMMIT), "run", "--all-files")
    assert second.returncode == 0, second.stdout


# A number that depends on a run, typed into prose, goes stale at the next run: the notebooks print
# them from the run instead. Figures cited from a paper (its author and year in the same paragraph)
# may stay, a handful at most; Exercises and References are exempt.
RUN_NUMBER = re.compile(r"\d+(?:\.\d+)?\s?%|\d[\d,]*\s?(?:images/s|img/s| s\b|seconds)")
CITATION = re.compile(r"et al\.|\(\d{4}[a-z]?\)|, \d{4}[a-z]?\)")


def typed_numbers(nb: Path) -> tuple[list[str], list[str]]:
    """The run-dependent-looking numbers in ``nb``'s prose: (uncited, cited)."""
    uncited, cited, exempt = [], [], False
    for n, cell in enumerate(nbformat.read(nb, as_version=4).cells, start=1):
        if cell.cell_type != "markdown":
            continue
        if re.match(r"#+\s*(Exercises|References)", cell.source):
            exempt = True
        elif re.match(r"#+\s", cell.source):
            exempt = False
        if exempt:
            continue
        for paragraph in cell.source.split("\n\n"):
            hits = [f"cell {n}: {m.group(0)!r}" for m in RUN_NUMBER.finditer(paragraph)]
            (cited if CITATION.search(paragraph) else uncited).extend(hits)
    return uncited, cited


def test_no_measured_number_is_typed_into_the_notebooks_prose():
    found = {nb.name: typed_numbers(nb) for nb in NOTEBOOKS}
    uncited = {name: u for name, (u, _) in found.items() if u}
    assert not uncited, (
        "numbers that depend on a run are typed into markdown (print them from the run instead):\n"
        + "\n".join(f"  {name}: {', '.join(hits)}" for name, hits in uncited.items())
    )
    assert sum(len(c) for _, c in found.values()) <= 5, "at most five figures cited from papers"


# The site's measured tables come from the committed records in benchmarks/results/ when it is built;
# a notebook the records lack (the next one, here) is shown as not measured yet, so a new notebook
# needs no new measurement for the suite to pass (tests/test_sixth_notebook.py adds one).
RESULTS = ROOT / "benchmarks" / "results"
STEMS = [*(nb.stem for nb in NOTEBOOKS), f"{len(NOTEBOOKS):02d}_new"]
PATHS = [f"notebooks/{stem}.ipynb" for stem in STEMS]


@pytest.mark.parametrize("preset", ["ci", "demo"])
def test_the_site_shows_the_committed_binder_walks(preset):
    """The records of tests/test_lab_e2e.py's walks, in the memory table of the page on speed."""
    record = json.loads((RESULTS / f"binder_walk_{preset}.json").read_text())
    steps = record["peak_mb_by_step"]
    per_notebook = " / ".join(f"{steps[s]:,}" if s in steps else "not measured yet" for s in STEMS)
    where = f"{record['date']}, {record['machine']}"
    row = f"| `{preset}` preset | {record['peak_mb']:,} MB | {per_notebook} MB | {where} |"
    assert record["preset"] == preset and record["peak_mb"] <= record["limit_mb"] == 2000
    assert record.get("most_busy_kernels_at_once", record["most_kernels_at_once"]) == 1
    page = course_site.page((ROOT / "site" / "speed.md").read_text(), PATHS)
    assert row in page and "{binder-walks}" not in page
    assert f"per notebook (with the server): {' / '.join(s[:2] for s in STEMS)} |" in page


def test_the_site_shows_the_committed_lecture_times():
    """tools/warm.py's record, in the lecture-times table of the teaching page."""
    record = json.loads((RESULTS / "lecture_times_demo.json").read_text())
    cold, warm = record["cold"], record["warm"]
    assert cold["preset"] == warm["preset"] == "demo"
    page = course_site.page((ROOT / "site" / "teaching.md").read_text(), PATHS)
    for stem in STEMS:
        c, w = cold["notebooks"].get(f"{stem}.ipynb"), warm["notebooks"].get(f"{stem}.ipynb")
        row = (
            f"{c['seconds']:.0f} s | {w['seconds']:.0f} s | {w['replayed']}"
            if c and w
            else "not measured yet | |"
        )
        assert f"| {stem} | {row} |" in page
    # The same measurement of the notebooks before instructor mode, cold, for the page's claim that
    # none is slower now: the same machine, the same day, and no slower within noise.
    before = record["before"]
    assert before["preset"] == "demo" and before["machine"] == cold["machine"]
    assert before["date"][:10] == cold["date"][:10]
    for name, b in before["notebooks"].items():
        assert f"{Path(name).stem} {b['seconds']:.0f} s" in page
        assert cold["notebooks"][name]["seconds"] <= 1.05 * b["seconds"], name

"""The repository itself: notebooks in lecture order and committed clean, dependencies declared once,
each public name of d2l_ext defined once, and the pre-commit hooks."""

import ast
import importlib
import importlib.util
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
    """site/_toc.yml lists every notebook of notebooks/, in lecture order: 00, 01, ... without a gap."""
    numbers = [Path(nb).name[:2] for nb in course_site.chapters()]  # SiteError unless toc and folder agree
    assert numbers == [f"{i:02d}" for i in range(len(NOTEBOOKS))]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{nb.name}: cells {dirty} have outputs; run `make format` (nbstripout) first"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_title_and_prints_its_preset(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith(f"# {nb.stem[:2]} ")
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "current_preset()" in code or "experiment(" in code
    assert json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_conda_environment_names_the_same_dependencies():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python=", "pip"))]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = names(pyproject()["dependencies"]) | names(pyproject()["optional-dependencies"]["lab"])
    assert names(conda) == declared
    assert "-e ." in pip and "conda-forge" in env["channels"]
    assert any(d.startswith("pytorch") and "cpu" in d for d in conda)  # the CPU build


def test_d2l_is_installed_without_its_pins_everywhere():
    assert "d2l" not in names(pyproject()["dependencies"])
    assert "--no-deps d2l==1.0.3" in (ROOT / "README.md").read_text()
    assert 'D2L_SPEC="d2l==1.0.3"' in (ROOT / "tools" / "setup.sh").read_text()
    assert "--no-deps" in (ROOT / "binder" / "postBuild").read_text()


def defined_names(module: Path) -> list[str]:
    """The public names a module of d2l_ext defines at top level; a function that d2l's
    ``add_to_class(C)`` attaches to a class elsewhere counts as ``C.name``."""
    names = []
    for node in ast.parse(module.read_text()).body:
        if cls := export.add_to_class_target(node):
            names.append(f"{cls}.{node.name}")
        names += [n for n in export.bound_names(node) if not n.startswith("_")]
    return names


def test_each_public_name_is_defined_in_one_module():
    """d2l's own library lets a later definition silently replace an earlier one; here a helper
    that two notebooks need lives once (the shared measuring tools in measure.py)."""
    where = defaultdict(list)
    for module in MODULES:
        for name in defined_names(module):
            where[name].append(module.relative_to(ROOT).as_posix())
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
    """The modules of d2l_ext that ``module`` imports (``__init__`` for the package itself), and those
    it imports inside a function: the graph that "no circle" is about, wherever the import sits."""
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
    """Each module imports only modules below it (ground floor: measure, data; lesson modules: torch,
    d2l and earlier lesson modules), at most four levels, none inside a function."""
    graph, nested = {}, []
    for module in MODULES:
        graph[module.stem], inside = internal_imports(module)
        nested += inside
    assert not nested, "an import inside a function hides a circle; import at the top:\n" + "\n".join(nested)
    level: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...] = ()) -> int:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name not in level:
            level[name] = 1 + max((depth(dep, (*path, name)) for dep in graph[name]), default=0)
        return level[name]

    for name in graph:
        depth(name)
    assert max(level.values()) <= 4, f"too many levels: {sorted(level.items(), key=lambda kv: kv[1])}"
    for i, lesson in enumerate(GENERATED):
        assert graph[lesson] <= set(GENERATED[:i]), (
            f"{lesson} imports {graph[lesson]}: lesson modules import only earlier ones"
        )


def code_lines(cls) -> int:
    """Lines of code of ``cls`` (a generated module's class holds the methods its notebook attaches
    with ``d2l.add_to_class``): the ``class`` line and the body, without docstrings, blank lines and
    comment-only lines; a statement that ruff wraps counts each line."""
    source = textwrap.dedent(inspect.getsource(cls))
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and ast.get_docstring(node) is not None:
            docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    lines = enumerate(source.splitlines(), start=1)
    return sum(1 for i, line in lines if i not in docstrings and line.strip()[:1] not in ("", "#"))


# The book's BatchNorm is not in its library (d2l/torch.py); its class in d2l-en at tag v1.0.3,
# chapter_convolutional-modern/batch-norm.md (PyTorch tab), counted as code_lines counts.
BOOK_BATCH_NORM_LINES = 19


@pytest.mark.parametrize(
    "ours, book",
    [("batch_norm.BatchNorm", BOOK_BATCH_NORM_LINES), ("resnet.Residual", "Residual"),
     ("resnext.ResNeXtBlock", "ResNeXtBlock")],
    ids=["BatchNorm", "Residual", "ResNeXtBlock"],
)  # fmt: skip
def test_a_lesson_class_has_at_most_one_and_a_half_times_the_books_lines(ours, book):
    """Its argument checks are one helper call each, so it reads like the book's class."""
    module, name = ours.split(".")
    cls = getattr(importlib.import_module(f"d2l_ext.{module}"), name)
    limit = 1.5 * (book if isinstance(book, int) else code_lines(getattr(d2l, book)))
    assert code_lines(cls) <= limit, f"{name}: {code_lines(cls)} lines of code, at most {limit:g}"


PRE_COMMIT = Path(sys.executable).with_name("pre-commit")


def hooks() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert all(repo["repo"] == "local" for repo in config["repos"])  # nothing fetched at commit time
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def test_pre_commit_runs_ruff_nbstripout_and_the_export_check():
    found = hooks()
    assert {"ruff-check", "ruff-format", "nbstripout", "export-check", "slides-check"} <= set(found)
    assert "--keep-id" in found["nbstripout"]["entry"]  # the cell ids name the cells: keep them
    assert found["export-check"]["entry"].endswith("tools/export.py --check")
    assert found["export-check"]["pass_filenames"] is False  # it checks every notebook, not the staged
    for hook in found.values():
        tool = ROOT / hook["entry"].split()[0]
        assert os.access(tool, os.X_OK), f"hook {hook['id']}: {tool} is missing; run `make setup`"
    assert "pre-commit" in names(pyproject()["optional-dependencies"]["test"])


def test_pre_commit_fixes_and_blocks_a_bad_commit(tmp_path):
    """The real hooks on a scratch repository: a notebook with outputs, unformatted code and a module
    out of sync are each caught; once fixed and exported, the same run passes."""
    assert PRE_COMMIT.exists(), f"{PRE_COMMIT} is missing: install the test tools with `make setup`"
    for name in (".pre-commit-config.yaml", "pyproject.toml", "tools/export.py", "tools/slides.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the hooks call .venv/bin/...: the tools running this
    (tmp_path / ".gitignore").write_text(".venv\n")
    (tmp_path / "d2l_ext").mkdir()
    (tmp_path / "bad.py").write_text("import os\nx=1\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Toy"),
        nbformat.v4.new_code_cell("def f(x):  # @save\n    return x\n\n\nf(1)"),
    ]
    nb.cells[1].execution_count = 1
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "1"}, execution_count=1)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "07_toy.ipynb")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    run("git", "init", "-q")
    run("git", "add", "-A")
    first = run(str(PRE_COMMIT), "run", "--all-files")
    assert first.returncode == 1
    for hook in ("nbstripout", "ruff-check", "ruff-format", "export-check", "slides-check"):
        assert f"hook id: {hook}" in first.stdout, f"{hook} did not fail:\n{first.stdout}"
    assert (tmp_path / "bad.py").read_text() == "x = 1\n"  # unused import removed, then formatted
    assert not any(
        c.get("outputs") for c in json.loads((tmp_path / "notebooks" / "07_toy.ipynb").read_text())["cells"]
    )
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


RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOK_PATHS = [f"notebooks/{nb.name}" for nb in NOTEBOOKS]


@pytest.mark.parametrize("preset", ["ci", "demo"])
def test_the_site_shows_the_committed_binder_walks(preset):
    """The memory table of the site's page on speed and memory is made from the records of the
    walks (tests/test_lab_e2e.py), committed in benchmarks/results/, when the site is built."""
    record = json.loads((RESULTS / f"binder_walk_{preset}.json").read_text())
    steps = record["peak_mb_by_step"]
    per_notebook = " / ".join(
        f"{steps[nb.stem]:,}" if nb.stem in steps else "not measured yet" for nb in NOTEBOOKS
    )
    where = f"{record['date']}, {record['machine']}"
    row = f"| `{preset}` preset | {record['peak_mb']:,} MB | {per_notebook} MB | {where} |"
    assert record["preset"] == preset and record["peak_mb"] <= record["limit_mb"] == 2000
    assert record.get("most_busy_kernels_at_once", record["most_kernels_at_once"]) == 1
    page = course_site.page((ROOT / "site" / "speed.md").read_text(), NOTEBOOK_PATHS)
    assert row in page and "{binder-walks}" not in page


def test_the_site_shows_the_committed_lecture_times():
    """The lecture-times table of the site's teaching page is tools/warm.py's record, committed in
    benchmarks/results/, made into the page when the site is built."""
    record = json.loads((RESULTS / "lecture_times_demo.json").read_text())
    cold, warm = record["cold"], record["warm"]
    assert cold["preset"] == warm["preset"] == "demo"
    page = course_site.page((ROOT / "site" / "teaching.md").read_text(), NOTEBOOK_PATHS)
    for nb in NOTEBOOKS:
        c, w = cold["notebooks"].get(nb.name), warm["notebooks"].get(nb.name)
        row = (
            f"| {c['seconds']:.0f} s | {w['seconds']:.0f} s | {w['replayed']} |"
            if c and w
            else "| not measured yet | | |"
        )
        assert f"| {nb.stem} {row}" in page
    # The same measurement of the notebooks before instructor mode, cold, for the page's claim that
    # none is slower now: the same machine, the same day, and no slower within noise.
    before = record["before"]
    assert before["preset"] == "demo" and before["machine"] == cold["machine"]
    assert before["date"][:10] == cold["date"][:10]
    for name, b in before["notebooks"].items():
        assert f"{Path(name).stem} {b['seconds']:.0f} s" in page
        assert cold["notebooks"][name]["seconds"] <= 1.05 * b["seconds"], name


def test_a_notebook_the_records_lack_is_shown_as_not_measured_yet():
    """A new notebook needs no new measurement for the suite to pass: its rows say so
    (tests/test_sixth_notebook.py adds one to a copy of the repository)."""
    new = f"{len(NOTEBOOKS):02d}_new"  # the next number
    notebooks = [*NOTEBOOK_PATHS, f"notebooks/{new}.ipynb"]
    teaching = course_site.page("{lecture-times}", notebooks)
    speed = course_site.page("{binder-walks}", notebooks)
    assert f"| {new} | not measured yet | | |" in teaching
    numbers = " / ".join(Path(nb).name[:2] for nb in notebooks)
    assert f"per notebook (with the server): {numbers}" in speed
    for preset in ("ci", "demo"):
        steps = json.loads((RESULTS / f"binder_walk_{preset}.json").read_text())["peak_mb_by_step"]
        (line,) = [line for line in speed.splitlines() if line.startswith(f"| `{preset}` preset |")]
        assert line.count("not measured yet") == sum(Path(nb).stem not in steps for nb in notebooks)

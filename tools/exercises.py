#!/usr/bin/env python3
"""Generate the students' exercise notebooks from the instructor's solutions, or check them.

``solutions/NN_topic.ipynb`` is an otter-assign source notebook (otter-grader's notebook format:
a raw ``# ASSIGNMENT CONFIG`` cell, then per exercise a ``# BEGIN QUESTION`` block with the
solution and, where the answer can be checked, exception-based test cells). ``otter assign``
turns it into the student version, which this tool writes as

- ``exercises/NN_topic.ipynb``: solutions replaced by ``...``, the explanations left out, a
  ``grader.check("exK")`` cell after each checked exercise;
- ``exercises/tests/NN_topic/exK.py``: the checks, one otter test file per question.

otter assign writes a notebook's tests next to it, in ``tests/``; here every notebook has its own
folder under ``exercises/tests/``, and the generated first cell, ``grader = otter.Notebook(...)``,
is given that folder as its ``tests_dir``. The kernel of a notebook opened in JupyterLab (or run
by nbval or nbconvert) starts in the notebook's folder, so the relative path holds wherever
JupyterLab was started. Then the files get what the pre-commit hooks would give them (nbstripout,
which also numbers the cell ids, ``ruff check --fix`` for the tests and ``ruff format``), so the
committed versions are a fixed point of the hooks and of this tool, and ``--check`` compares bytes.

An exercise in a solutions notebook is a Markdown cell that starts with a heading ``Exercise N``,
the exercise's text as the lecture notebook states it, and a line ``Checked: yes`` (the question
has tests) or ``Checked: no`` (an open question with a model answer); its question is named
``exN``. ``--count`` counts both kinds.

    python tools/exercises.py           # write exercises/ from solutions/
    python tools/exercises.py --check   # exit 1, naming every file that differs from what solutions/ gives
    python tools/exercises.py --count   # checked and model-answer exercises per notebook (Markdown)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES, NOTEBOOKS = ROOT / "solutions", ROOT / "exercises", ROOT / "notebooks"
NAME = re.compile(r"^\d\d_[a-z][a-z0-9_]*\.ipynb$")
BIN = Path(sys.executable).parent  # the venv's ruff, which the pre-commit hooks use

# What every ASSIGNMENT CONFIG must say: the checks run in the student's own notebook, and nothing
# is made for Gradescope (no autograder zip, which also carries a timestamp), no PDF, no export
# cell; otter's own run of the tests on the solutions is off because nbval runs them (make test).
REQUIRED_CONFIG = {
    "init_cell": True,
    "check_all_cell": False,
    "export_cell": False,
    "generate": False,
    "run_tests": False,
    "solutions_pdf": False,
    "template_pdf": False,
    "tests": {"files": True, "ok_format": False},
}
ALLOWED_CONFIG = set(REQUIRED_CONFIG) | {"name", "show_question_points"}

EXERCISE = re.compile(r"^\s*(?:#{1,6}\s*)?[*_]*Exercise\s+(\d+)\b[*_.:]*\s*$", re.I)
CHECKED = re.compile(r"^\W*Checked\W*\s*(yes|no)\b", re.I)
BLOCK = re.compile(r"^\s*#\s*(BEGIN|END)\s+(QUESTION|SOLUTION|PROMPT|TESTS)\b", re.I)
ITEM = re.compile(r"^(\d+)\.\s+(.*)$")


class ExerciseError(Exception):
    """A solutions notebook that cannot be turned into a student version; the message says why."""


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def sources(solutions: Path = SOLUTIONS) -> list[Path]:
    """The solutions notebooks, ``NN_topic.ipynb``, in lecture order."""
    return sorted(p for p in solutions.glob("*.ipynb") if NAME.match(p.name))


# -- the source notebook -------------------------------------------------------------------------


def assignment_config(notebook: Path) -> dict:
    """The YAML of the notebook's ``# ASSIGNMENT CONFIG`` raw cell, checked against `REQUIRED_CONFIG`."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "raw"]
    configs = [_source(c) for c in cells if re.match(r"#\s+assignment\s+config", _source(c), re.I)]
    fix = "\n".join(yaml.safe_dump(REQUIRED_CONFIG, sort_keys=False).splitlines())
    if len(configs) != 1:
        raise ExerciseError(
            f"{_rel(notebook)}: found {len(configs)} raw cells '# ASSIGNMENT CONFIG'; give it exactly "
            f"one, as its first cell, with:\n{fix}"
        )
    config = yaml.safe_load(configs[0]) or {}
    wrong = {k: config.get(k, "(unset)") for k, v in REQUIRED_CONFIG.items() if config.get(k) != v}
    unknown = sorted(set(config) - ALLOWED_CONFIG)
    if wrong or unknown:
        said = ", ".join(f"{k}: {v}" for k, v in wrong.items())
        raise ExerciseError(
            f"{_rel(notebook)}: its ASSIGNMENT CONFIG "
            + (f"says {said}" if wrong else "")
            + (" and " if wrong and unknown else "")
            + (f"sets {', '.join(unknown)}, which this bundle does not use" if unknown else "")
            + f". The exercises are checked locally in the student's notebook; the config must hold:\n{fix}"
        )
    return config


@dataclasses.dataclass
class Exercise:
    number: int
    text: str  # as the heading's cell states it, between the heading and the Checked line
    checked: bool
    question: str | None  # the name of the question block the cell is in
    tests: list[str]  # the sources of that question's test cells


def exercises(notebook: Path) -> list[Exercise]:
    """The exercises of a solutions notebook, in order, with their question and its tests."""
    found: list[Exercise] = []
    question, block, tests = None, [], {}
    for cell in json.loads(notebook.read_text())["cells"]:
        src = _source(cell)
        m = BLOCK.match(src) if cell["cell_type"] == "raw" else None
        if m:
            begin, kind = m[1].upper() == "BEGIN", m[2].upper()
            if kind == "QUESTION" and begin:
                question = (yaml.safe_load(src.split("\n", 1)[1]) or {}).get("name")
                tests.setdefault(question, [])
            elif kind == "QUESTION":
                question = None
            block = [*block, kind] if begin else block[:-1]
            continue
        if block and block[-1] == "TESTS" and cell["cell_type"] == "code":
            tests[question].append(src)
        if cell["cell_type"] != "markdown":
            continue
        lines = src.strip().splitlines()
        head = EXERCISE.match(lines[0]) if lines else None
        if not head:
            continue
        marks = [i for i, line in enumerate(lines) if CHECKED.match(line)]
        if not marks:
            raise ExerciseError(
                f"{_rel(notebook)}: Exercise {head[1]} has no line 'Checked: yes' (the question has "
                "tests) or 'Checked: no' (an open question, answered in words): add one under its text."
            )
        text = " ".join(" ".join(lines[1 : marks[0]]).split())
        checked = CHECKED.match(lines[marks[0]])[1].lower() == "yes"
        found.append(Exercise(int(head[1]), text, checked, question, []))
    for ex in found:
        ex.tests = tests.get(ex.question, [])
    return found


def problems(notebook: Path) -> list[str]:
    """What is wrong with the exercises' layout of a solutions notebook (empty: nothing)."""
    found = []
    exs = exercises(notebook)
    if [ex.number for ex in exs] != list(range(1, len(exs) + 1)):
        found.append(f"exercises numbered {[ex.number for ex in exs]}, not 1, 2, ... in order")
    for ex in exs:
        if ex.question != f"ex{ex.number}":
            where = f"in question {ex.question!r}" if ex.question else "outside every question block"
            found.append(f"Exercise {ex.number} is {where}: make it the first cell of question ex{ex.number}")
        elif ex.checked and not ex.tests:
            found.append(f"Exercise {ex.number} says 'Checked: yes', but {ex.question} has no test cell")
        elif not ex.checked and ex.tests:
            found.append(f"Exercise {ex.number} says 'Checked: no', but {ex.question} has tests")
    return found


def lecture_exercises(notebook: Path) -> dict[int, str]:
    """The numbered exercises of a lecture notebook's "## Exercises" section, whitespace collapsed."""
    items: dict[int, list[str]] = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        lines = _source(cell).splitlines()
        if cell["cell_type"] != "markdown" or "## Exercises" not in [line.strip() for line in lines]:
            continue
        start = [line.strip() for line in lines].index("## Exercises") + 1
        current = None
        for line in lines[start:]:
            if line.startswith("#"):
                break
            m = ITEM.match(line)
            if m:
                current = int(m[1])
                items[current] = [m[2]]
            elif current is not None:
                items[current].append(line)
    return {n: " ".join(" ".join(text).split()) for n, text in items.items()}


# -- generation ----------------------------------------------------------------------------------


def _assign(source: Path, result: Path) -> None:
    """otter assign, in this process, quietly (it logs a summary of the points)."""
    from otter.assign import main as assign

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            assign(str(source), str(result), no_pdfs=True, no_run_tests=True)
        except Exception as e:
            raise ExerciseError(f"{_rel(source)}: otter assign failed: {e}\n{err.getvalue()}") from e


# nbstripout's default metadata keys to strip (its command line's, which the pre-commit hook runs).
STRIP_KEYS = [
    "metadata.signature",
    "metadata.widgets",
    "cell.metadata.collapsed",
    "cell.metadata.ExecuteTime",
    "cell.metadata.execution",
    "cell.metadata.heading_collapsed",
    "cell.metadata.hidden",
    "cell.metadata.scrolled",
]


def _strip(path: Path) -> None:
    """``nbstripout path`` with its defaults, in this process (its command would import nbformat anew)."""
    import nbformat
    import nbstripout

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nb = nbstripout.strip_output(
        nb, keep_output=False, keep_count=False, keep_id=False, extra_keys=STRIP_KEYS
    )
    nbformat.write(nb, path)


def _ruff(args: list[str], rel: Path, content: bytes) -> tuple[int, bytes, str]:
    """Run ruff on ``content`` as if it were the file ``exercises/<rel>``: with the settings (and any
    per-file ones) that ``make lint`` applies there. Returns the exit code, stdout and stderr."""
    exe = BIN / "ruff"
    if not exe.exists():
        raise ExerciseError(f"{exe} is missing: run `make setup` (it installs the test tools into .venv).")
    name = str(EXERCISES.relative_to(ROOT) / rel)
    done = subprocess.run(
        [str(exe), *args, "--stdin-filename", name, "-"], input=content, capture_output=True, cwd=ROOT
    )
    return done.returncode, done.stdout, done.stderr.decode()


def _finish(rel: Path, content: bytes) -> tuple[bytes, str]:
    """``content`` as the pre-commit hooks leave it, and what ``make lint`` would find in it."""
    if rel.suffix == ".py":  # otter unparses the tests: imports in one block, generators in parentheses
        code, content, err = _ruff(["check", "--fix", "--exit-zero", "--quiet"], rel, content)
    code, content, err = _ruff(["format", "--quiet"], rel, content)
    if code:
        raise ExerciseError(f"ruff format failed on the generated exercises/{rel}:\n{err}")
    code, out, err = _ruff(["check", "--output-format", "concise", "--quiet"], rel, content)
    return content, (out.decode() + err if code else "")


def generate(source: Path) -> dict[Path, bytes]:
    """The student version of one solutions notebook: file contents by path relative to exercises/."""
    assignment_config(source)
    if found := problems(source):
        raise ExerciseError(f"{_rel(source)}: " + "; ".join(found) + ".")
    stem = source.stem
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp, "result")
        _assign(source, result)
        student = result / "student"
        made = sorted(p.relative_to(student) for p in student.rglob("*") if p.is_file())
        tests = sorted((student / "tests").glob("*.py"))
        if set(made) != {Path(source.name)} | {t.relative_to(student) for t in tests}:
            raise ExerciseError(f"{_rel(source)}: otter assign wrote {', '.join(map(str, made))}; expected "
                                "only the notebook and tests/*.py: check the ASSIGNMENT CONFIG.")  # fmt: skip
        nb = json.loads((student / source.name).read_text())
        otter_init = f'# Initialize Otter\nimport otter\ngrader = otter.Notebook("{source.name}")'
        inits = [c for c in nb["cells"] if c["cell_type"] == "code" and _source(c) == otter_init]
        if len(inits) != 1:
            raise ExerciseError(f"{_rel(source)}: otter assign made no init cell {otter_init!r}; "
                                "is otter-grader 7 installed (`make setup`)?")  # fmt: skip
        inits[0]["source"] = otter_init[:-1] + f', tests_dir="tests/{stem}")'
        staged = Path(tmp, source.name)
        staged.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        _strip(staged)
        out = {Path(source.name): staged.read_bytes()}
        out |= {Path("tests", stem, test.name): test.read_bytes() for test in tests}
        finished = {rel: _finish(rel, content) for rel, content in out.items()}
    lint = "".join(found for _, found in finished.values())
    if lint:
        raise ExerciseError(
            f"{_rel(source)}: the student version would fail `make lint`:\n{lint}Change the solutions "
            "notebook: an import that only the solutions use goes inside a solution block, and a "
            "failure_message takes at most 87 characters (the line length of the test files)."
        )
    return {rel: content for rel, (content, _) in finished.items()}


def _owned(exercises_dir: Path, keep: set[str] = frozenset()) -> set[Path]:
    """Files under exercises/ that this tool writes (notebooks NN_topic.ipynb and their test folders),
    but for the stems in ``keep``, by path relative to exercises/."""
    owned = {
        p.relative_to(exercises_dir)
        for p in exercises_dir.glob("*.ipynb")
        if NAME.match(p.name) and p.stem not in keep
    }
    for folder in (exercises_dir / "tests").glob("*"):
        if folder.is_dir() and NAME.match(folder.name + ".ipynb") and folder.name not in keep:
            owned |= {p.relative_to(exercises_dir) for p in folder.rglob("*") if p.is_file()}
    return owned


def build(solutions: Path = SOLUTIONS) -> tuple[dict[Path, bytes], dict[str, str]]:
    """Every generated file, by path relative to exercises/, and what kept a notebook from being
    generated, by its stem."""
    out: dict[Path, bytes] = {}
    failed: dict[str, str] = {}
    for source in sources(solutions):
        try:
            out |= generate(source)
        except ExerciseError as e:
            failed[source.stem] = str(e)
    return out, failed


def write(solutions: Path = SOLUTIONS, exercises_dir: Path = EXERCISES) -> tuple[list[Path], list[str]]:
    """Write exercises/ from solutions/ and remove what no solutions notebook generates. A notebook
    that cannot be generated keeps its files as they are. Returns the paths changed and the errors."""
    out, failed = build(solutions)
    changed = []
    for rel in sorted(_owned(exercises_dir, keep=set(failed)) - set(out)):
        (exercises_dir / rel).unlink()
        changed.append(rel)
    for rel, content in out.items():
        path = exercises_dir / rel
        if not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            changed.append(rel)
    for folder in (exercises_dir / "tests").glob("*"):  # a folder emptied above
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return changed, list(failed.values())


def check(solutions: Path = SOLUTIONS, exercises_dir: Path = EXERCISES) -> list[str]:
    """What differs between exercises/ and what solutions/ generates, one line per file, and what
    keeps a solutions notebook from being generated (empty: in sync)."""
    out, failed = build(solutions)
    found = list(failed.values())
    for rel, content in out.items():
        path = exercises_dir / rel
        source = solutions / f"{rel.parts[1] if rel.parts[0] == 'tests' else rel.stem}.ipynb"
        if not path.exists():
            found.append(f"{_rel(path)} is missing: {_rel(source)} generates it")
        elif path.read_bytes() != content:
            found.append(f"{_rel(path)} differs from what {_rel(source)} generates")
    for rel in sorted(_owned(exercises_dir, keep=set(failed)) - set(out)):
        found.append(f"{_rel(exercises_dir / rel)} is stale: no solutions notebook generates it")
    return found


def count_table(solutions: Path = SOLUTIONS) -> str:
    """Checked and model-answer exercises per solutions notebook, as a Markdown table."""
    rows, totals = [], [0, 0, 0]
    for source in sources(solutions):
        exs = exercises(source)
        n, checked = len(exs), sum(ex.checked for ex in exs)
        rows.append(f"| {source.stem} | {n} | {checked} | {n - checked} |")
        totals = [totals[0] + n, totals[1] + checked, totals[2] + n - checked]
    share = f"{totals[1] / totals[0]:.0%}" if totals[0] else "-"
    return "\n".join(
        [
            "| notebook | exercises | checked | model answer |",
            "|---|---:|---:|---:|",
            *rows,
            f"| all | {totals[0]} | {totals[1]} ({share}) | {totals[2]} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if exercises/ is not what solutions/ gives")
    mode.add_argument("--count", action="store_true", help="print the checked and model-answer exercises")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--exercises", type=Path, default=EXERCISES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.solutions.is_dir():
        # A copy for students leaves solutions/ out: then there is nothing to generate or check.
        print(f"{_rel(args.solutions)} is absent: no exercises to generate or check.")
        return 0
    try:
        if args.count:
            print(count_table(args.solutions))
            return 0
        if args.check:
            found = check(args.solutions, args.exercises)
            if found:
                print("The student exercises are not what the solutions generate:", file=sys.stderr)
                print("\n".join(f"  {line}" for line in found), file=sys.stderr)
                print(
                    "Run `python tools/exercises.py` (make exercises), then commit exercises/.",
                    file=sys.stderr,
                )
                return 1
            print(f"{_rel(args.exercises)} is in sync with {_rel(args.solutions)}.")
            return 0
        changed, errors = write(args.solutions, args.exercises)
        for rel in changed:
            print(f"wrote {_rel(args.exercises / rel)}" if (args.exercises / rel).exists()
                  else f"removed {_rel(args.exercises / rel)}")  # fmt: skip
        if not changed and not errors:
            print(f"{_rel(args.exercises)} was already up to date.")
        for error in errors:
            print(error, file=sys.stderr)
        return 1 if errors else 0
    except ExerciseError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate the students' exercise notebooks from the instructor's solutions (``make exercises``).

``otter assign`` turns ``solutions/NN_topic.ipynb`` into ``exercises/NN_topic.ipynb`` (its checks in
``exercises/tests/NN_topic/exK.py``), which then get what the pre-commit hooks would give them, so
that ``--check`` compares bytes; ``--count`` prints the checked and model-answer exercises per
notebook. An exercise is a Markdown cell: a heading ``Exercise N``, the lecture notebook's text, and
``Checked: yes`` (question ``exN`` has tests) or ``Checked: no`` (a model answer).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import nbformat
import nbstripout
import yaml
from otter.assign import main as otter_assign

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
NAME = re.compile(r"^\d\d_[a-z][a-z0-9_]*\.ipynb$")
RUFF = Path(sys.executable).parent / "ruff"  # the venv's, which the pre-commit hooks use
# The checks run in the student's notebook: no autograder zip (it carries a timestamp), no PDF, no
# export cell; otter's own run of the tests is off since nbval runs them.
OFF = ["check_all_cell", "export_cell", "generate", "run_tests", "solutions_pdf", "template_pdf"]
REQUIRED_CONFIG = {
    "init_cell": True,
    **dict.fromkeys(OFF, False),
    "tests": {"files": True, "ok_format": False},
}
OPTIONAL_CONFIG = {"name", "show_question_points"}
CONFIG = re.compile(r"#\s+assignment\s+config", re.I)
EXERCISE = re.compile(r"^\s*(?:#{1,6}\s*)?[*_]*Exercise\s+(\d+)\b[*_.:]*\s*$", re.I)
CHECKED = re.compile(r"^\W*Checked\W*\s*(yes|no)\b", re.I)
BLOCK = re.compile(r"^\s*#\s*(BEGIN|END)\s+(QUESTION|SOLUTION|PROMPT|TESTS)\b", re.I)
# nbstripout's default metadata keys (its command line's, which the pre-commit hook runs)
STRIP_KEYS = ["metadata.signature", "metadata.widgets"] + [
    f"cell.metadata.{k}"
    for k in ("collapsed", "ExecuteTime", "execution", "heading_collapsed", "hidden", "scrolled")
]


class ExerciseError(Exception):
    """A solutions notebook that cannot be turned into a student version; the message says why."""


class Exercise(NamedTuple):
    number: int
    text: str  # between the heading and the Checked line, whitespace collapsed
    checked: bool
    question: str | None  # the name of the question block the cell is in
    tested: bool  # whether that question has test cells


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def sources() -> list[Path]:
    """The solutions notebooks, ``NN_topic.ipynb``, in lecture order."""
    return sorted(p for p in SOLUTIONS.glob("*.ipynb") if NAME.match(p.name))


def exercises(notebook: Path) -> list[Exercise]:
    """The exercises of a solutions notebook, in order."""
    found, question, block, tested = [], None, [], set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        lines = cell.source.strip().splitlines() or [""]
        if cell.cell_type == "raw" and (m := BLOCK.match(cell.source)):
            begin, kind = m[1].upper() == "BEGIN", m[2].upper()
            if kind == "QUESTION":
                question = (
                    (yaml.safe_load(cell.source.partition("\n")[2]) or {}).get("name") if begin else None
                )
            block = [*block, kind] if begin else block[:-1]
        elif cell.cell_type == "code" and block[-1:] == ["TESTS"]:
            tested.add(question)
        elif cell.cell_type == "markdown" and (head := EXERCISE.match(lines[0])):
            marks = [i for i, line in enumerate(lines) if CHECKED.match(line)]
            if not marks:
                raise ExerciseError(
                    f"{_rel(notebook)}: Exercise {head[1]} has no line 'Checked: yes' (the question has "
                    "tests) or 'Checked: no' (an open question, answered in words): add one under its text."
                )
            checked = CHECKED.match(lines[marks[0]])[1].lower() == "yes"
            text = " ".join(" ".join(lines[1 : marks[0]]).split())
            found.append(Exercise(int(head[1]), text, checked, question, False))
    return [ex._replace(tested=ex.question in tested) for ex in found]


def problems(notebook: Path) -> list[str]:
    """What keeps a solutions notebook from being generated: its config, its exercises' layout."""
    found, fix = [], yaml.safe_dump(REQUIRED_CONFIG, sort_keys=False, default_flow_style=True).strip()
    cells = nbformat.read(notebook, as_version=4).cells
    configs = [
        yaml.safe_load(c.source) or {} for c in cells if c.cell_type == "raw" and CONFIG.match(c.source)
    ]
    if len(configs) != 1:
        found.append(f"found {len(configs)} raw cells '# ASSIGNMENT CONFIG'; give it one, that holds {fix}")
    elif wrong := sorted(
        k
        for k in configs[0].keys() - OPTIONAL_CONFIG | REQUIRED_CONFIG.keys()
        if configs[0].get(k, "(unset)") != REQUIRED_CONFIG.get(k)
    ):
        said = ", ".join(f"{k}: {configs[0].get(k, '(unset)')}" for k in wrong)
        found.append(
            f"its ASSIGNMENT CONFIG says {said}; as the checks run in the student's notebook, it must "
            f"hold {fix} (and may set {' or '.join(sorted(OPTIONAL_CONFIG))})"
        )
    exs = exercises(notebook)
    if [ex.number for ex in exs] != list(range(1, len(exs) + 1)):
        found.append(f"exercises numbered {[ex.number for ex in exs]}, not 1, 2, ... in order")
    for ex in exs:
        if ex.question != f"ex{ex.number}":
            where = f"in question {ex.question!r}" if ex.question else "outside every question block"
            found.append(f"Exercise {ex.number} is {where}: make it the first cell of question ex{ex.number}")
        elif ex.checked != ex.tested:
            found.append(
                f"Exercise {ex.number} says 'Checked: {'yes' if ex.checked else 'no'}', but "
                f"{ex.question} has {'no test cell' if ex.checked else 'tests'}"
            )
    return found


def _ruff(rel: Path, content: bytes, *args: str) -> subprocess.CompletedProcess:
    """ruff on ``content`` as the file ``exercises/<rel>``, with the settings ``make lint`` applies there."""
    command = [RUFF, *args, "--quiet", "--stdin-filename", Path("exercises", rel), "-"]
    return subprocess.run(command, input=content, capture_output=True, cwd=ROOT)


def _finish(rel: Path, content: bytes) -> tuple[bytes, str]:
    """``content`` as the pre-commit hooks leave it, and what ``make lint`` would find in it."""
    if rel.suffix == ".py":  # otter unparses the tests: imports in one block, generators in parentheses
        content = _ruff(rel, content, "check", "--fix", "--exit-zero").stdout
    content = _ruff(rel, content, "format").stdout or content  # none if it cannot parse: the check says why
    lint = _ruff(rel, content, "check", "--output-format", "concise")
    return content, (lint.stdout + lint.stderr).decode() if lint.returncode else ""


def generate(source: Path) -> dict[Path, bytes]:
    """The student version of one solutions notebook: file contents by path relative to exercises/."""
    if found := problems(source):
        raise ExerciseError(f"{_rel(source)}: " + "; ".join(found) + ".")
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            try:  # quietly: otter logs a summary of the points
                otter_assign(str(source), tmp, no_pdfs=True, no_run_tests=True)
            except Exception as e:
                raise ExerciseError(f"{_rel(source)}: otter assign failed: {e}\n{err.getvalue()}") from e
        student = Path(tmp, "student")
        nb = nbformat.read(student / source.name, as_version=nbformat.NO_CONVERT)
        init = f'otter.Notebook("{source.name}"'
        for (
            cell
        ) in nb.cells:  # each notebook's checks in a folder of their own (a kernel starts in its folder)
            cell.source = cell.source.replace(init, f'{init}, tests_dir="tests/{source.stem}"')
        nb = nbstripout.strip_output(
            nb, keep_output=False, keep_count=False, keep_id=False, extra_keys=STRIP_KEYS
        )
        out = {Path(source.name): nbformat.writes(nb).encode() + b"\n"}
        out |= {
            Path("tests", source.stem, t.name): t.read_bytes()
            for t in sorted((student / "tests").glob("*.py"))
        }
    finished = {rel: _finish(rel, content) for rel, content in out.items()}
    if lint := "".join(found for _, found in finished.values()):
        raise ExerciseError(
            f"{_rel(source)}: the student version would fail `make lint`:\n{lint}Change the solutions "
            "notebook: an import that only the solutions use goes inside a solution block, and a "
            "failure_message takes at most 87 characters (the line length of the test files)."
        )
    return {rel: content for rel, (content, _) in finished.items()}


def _stem(rel: Path) -> str:
    """The notebook a file of exercises/ belongs to."""
    return rel.parts[1] if rel.parts[0] == "tests" else rel.stem


def plan() -> tuple[dict[Path, bytes | None], list[str]]:
    """The files of exercises/ to write (their bytes) or remove (None) to match solutions/, and the
    errors that keep a solutions notebook from being generated (its files are left as they are)."""
    out, failed = {}, {}
    for source in sources():
        try:
            out |= generate(source)
        except ExerciseError as e:
            failed[source.stem] = str(e)
    written = [*EXERCISES.glob("*.ipynb"), *EXERCISES.glob("tests/*/**/*")]  # NN_topic.ipynb, tests/NN_topic/
    owned = {
        rel for p in written if p.is_file() and NAME.match(_stem(rel := p.relative_to(EXERCISES)) + ".ipynb")
    }
    changes = {rel: None for rel in sorted(owned - out.keys()) if _stem(rel) not in failed}
    for rel, content in out.items():
        if not (EXERCISES / rel).exists() or (EXERCISES / rel).read_bytes() != content:
            changes[rel] = content
    return changes, list(failed.values())


def count_table() -> str:
    """Checked and model-answer exercises per solutions notebook, as a Markdown table."""
    rows, n, checked = ["| notebook | exercises | checked | model answer |", "|---|---:|---:|---:|"], 0, 0
    for source in sources():
        exs = exercises(source)
        k = sum(ex.checked for ex in exs)
        rows.append(f"| {source.stem} | {len(exs)} | {k} | {len(exs) - k} |")
        n, checked = n + len(exs), checked + k
    share = f"{checked / n:.0%}" if n else "-"
    return "\n".join([*rows, f"| all | {n} | {checked} ({share}) | {n - checked} |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if exercises/ is not what solutions/ gives")
    mode.add_argument("--count", action="store_true", help="print the checked and model-answer exercises")
    args = parser.parse_args(argv)
    if not SOLUTIONS.is_dir():  # a copy for students leaves solutions/ out
        print(f"{_rel(SOLUTIONS)} is absent: no exercises to generate or check.")
        return 0
    try:
        if args.count:
            print(count_table())
            return 0
        changes, errors = plan()
    except ExerciseError as e:
        print(e, file=sys.stderr)
        return 1
    for rel, content in changes.items():
        path, source = EXERCISES / rel, _rel(SOLUTIONS / f"{_stem(rel)}.ipynb")
        said = (
            f"differs from what {source} generates" if path.exists() else f"is missing: {source} generates it"
        )
        said = "is stale: no solutions notebook generates it" if content is None else said
        if args.check:
            errors.append(f"{_rel(path)} {said}")
            continue
        print(f"{_rel(path)} {said}: {'removed' if content is None else 'written'}")
        if content is None:
            path.unlink()
            if rel.parts[0] == "tests" and not any(path.parent.iterdir()):
                path.parent.rmdir()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    if args.check and errors:
        errors.append("Run `python tools/exercises.py` (make exercises), then commit exercises/.")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    if not changes:
        print(f"{_rel(EXERCISES)} is in sync with {_rel(SOLUTIONS)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

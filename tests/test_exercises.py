"""The exercises: solutions/ (otter-assign sources) and exercises/ (what students get), which is
what ``tools/exercises.py`` generates. Each exercise states the lecture's text; the student notebook
holds no solution and leaves each name a check reads as an empty answer of one exercise; there every
check fails with a fixed hint, and each test cell calls its test as otter does (nbval runs them)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from repo_scripts import script

ROOT = Path(__file__).resolve().parent.parent
tool = script("tools/exercises.py", "exercises_tool")

SOURCES = tool.sources()
IDS = [p.stem for p in SOURCES]
CHECK_CELL = re.compile(r'^grader\.check\("(ex\d+)"\)$')
MARK = re.compile(r"#\s*SOLUTION( NO PROMPT)?\s*$")


def cells(notebook: Path) -> list:
    return nbformat.read(notebook, as_version=4).cells


def blocks(notebook: Path):
    """Each cell of a solutions notebook but the block boundaries, with the innermost block it is in."""
    block = []
    for cell in cells(notebook):
        if cell.cell_type == "raw" and (m := tool.BLOCK.match(cell.source)):
            block = [*block, m[2].upper()] if m[1].upper() == "BEGIN" else block[:-1]
        else:
            yield cell, (block or [None])[-1]


def solution_lines(notebook: Path) -> set[str]:
    """The lines (12 characters or more) that the student version must not hold: those of a solution
    block's Markdown cells, and of its code between ``# BEGIN``/``# END SOLUTION`` or marked
    ``# SOLUTION``; lines that a visible cell holds too aside."""
    hidden, shown = set(), set()
    for cell, block in blocks(notebook):
        lines, inside = [line.strip() for line in cell.source.splitlines()], cell.cell_type == "markdown"
        for line in lines:
            if block == "SOLUTION" and re.match(r"#\s*(BEGIN|END) SOLUTION", line):
                inside = "BEGIN" in line
            elif block == "SOLUTION" and (inside or MARK.search(line)):
                hidden.add(MARK.sub("", line).strip())
            else:
                shown.add(line)
    return {line for line in hidden - shown if len(line) >= 12}


def student(stem: str) -> Path:
    return tool.EXERCISES / f"{stem}.ipynb"


def check_functions(stem: str) -> list[tuple[Path, ast.FunctionDef]]:
    return [
        (path, node)
        for path in sorted((tool.EXERCISES / "tests" / stem).glob("*.py"))
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef)
    ]


# -- the tool ------------------------------------------------------------------------------------


def test_student_versions_are_what_the_solutions_generate():
    assert SOURCES, "solutions/ holds no NN_topic.ipynb"
    changes, errors = tool.plan()
    assert not errors and not changes, errors + [str(rel) for rel in changes]


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = tool.main(list(argv))
    return code, err.getvalue()


def test_check_names_what_differs_and_writing_mends_it(tmp_path, monkeypatch):
    first = SOURCES[0]
    solution, tests = tmp_path / "solutions" / first.name, tmp_path / "exercises" / "tests" / first.stem
    shutil.copytree(tool.EXERCISES / "tests" / first.stem, tests)
    shutil.copyfile(student(first.stem), tmp_path / "exercises" / first.name)
    solution.parent.mkdir()
    shutil.copyfile(first, solution)
    monkeypatch.setattr(tool, "SOLUTIONS", solution.parent)
    monkeypatch.setattr(tool, "EXERCISES", tmp_path / "exercises")
    assert run("--check") == (0, "")
    # A new answer on a "# SOLUTION" line changes nothing a student sees...
    solution.write_text(re.sub(r'= [^"\n]*  # SOLUTION', "= None  # SOLUTION", first.read_text(), count=1))
    assert solution.read_text() != first.read_text() and run("--check") == (0, "")
    # ... but an edited exercise text does, and so do a missing and a stale check: --check names them.
    solution.write_text(first.read_text().replace("Checked: yes.", "Checked: yes. Edited.", 1))
    missing = sorted(tests.glob("*.py"))[0]
    kept = missing.read_bytes()
    missing.unlink()
    (tests / "ex99.py").write_text("name = 'ex99'\n")
    code, err = run("--check")
    assert code == 1 and "make exercises" in err
    assert (
        f"{first.name} differs from what" in err
        and f"{missing.name} is missing" in err
        and "ex99.py is stale" in err
    )
    assert run()[0] == 0 and run("--check") == (0, "")  # writing mends all three
    assert missing.read_bytes() == kept and not (tests / "ex99.py").exists()


def notebook_with(tmp_path: Path, config: str, *cells: tuple[str, str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_raw_cell(config)]
    nb.cells += [getattr(nbformat.v4, f"new_{kind}_cell")(text) for kind, text in cells]
    path = tmp_path / "07_toy.ipynb"
    nbformat.write(nb, path)
    return path


CONFIG = "# ASSIGNMENT CONFIG\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in tool.REQUIRED_CONFIG.items())
TEST = "def test(x):\n    assert x, 'hint'\n\n\ntest(x)"


def exercise(number: int, question: str | None, checked: str, tests=(), body=()) -> list[tuple[str, str]]:
    """The cells of an exercise: its question block with its text, ``body`` and a test cell per test."""
    text = ("markdown", f"## Exercise {number}\n\n(easy) Text.\n\nChecked: {checked}.")
    tested = (
        [("raw", "# BEGIN TESTS"), *(("code", t) for t in tests), ("raw", "# END TESTS")] if tests else []
    )
    if question is None:
        return [text]
    return [("raw", f"# BEGIN QUESTION\nname: {question}"), text, *body, *tested, ("raw", "# END QUESTION")]


GOOD = [(1, "ex1", "yes", [TEST]), (2, "ex2", "no")]


# A config line to set, the exercises' layout, and what problems() says.
PROBLEMS = {
    "good": ("", GOOD, []),
    "checked-without-tests": ("", [(1, "ex1", "yes")], ["'Checked: yes', but ex1 has no test"]),
    "open-with-tests": ("", [(1, "ex1", "no", [TEST])], ["Exercise 1 says 'Checked: no', but ex1 has tests"]),
    "misnumbered": ("", [(2, "ex1", "no")], ["numbered [2], not 1, 2", "Exercise 2 is in question 'ex1'"]),
    "outside": ("", [(1, None, "no")], ["Exercise 1 is outside every question block"]),
    "generate": ("generate: true", GOOD, ["says generate: True"]),
    "export-cell": ("export_cell: true", GOOD, ["says export_cell: True"]),
    "tests-in-notebook": ("tests: {files: false, ok_format: false}", GOOD, ["says tests: {'files': False"]),
    "requirements": ("requirements: requirements.txt", GOOD, ["says requirements: requirements.txt"]),
    "no-config": (None, GOOD, ["found 0 raw cells '# ASSIGNMENT CONFIG'"]),
}  # fmt: skip


@pytest.mark.parametrize("config, layout, found", PROBLEMS.values(), ids=PROBLEMS)
def test_problems_are_named_with_what_to_write(tmp_path, config, layout, found):
    key = (config or "").split(":")[0]
    kept = "\n".join(line for line in CONFIG.splitlines() if not key or not line.startswith(key + ":"))
    parts = [part for args in layout for part in exercise(*args)]
    problems = tool.problems(
        notebook_with(tmp_path, "a raw cell" if config is None else f"{kept}\n{config}", *parts)
    )
    assert len(problems) == len(found) and all(f in p for f, p in zip(found, problems)), problems
    assert all("generate: false" in p for p in problems if "CONFIG" in p)  # what to write


def test_a_missing_checked_line_or_a_student_version_that_would_fail_lint_is_refused(tmp_path):
    path = notebook_with(tmp_path, CONFIG, ("markdown", "## Exercise 1\n\n(easy) Text."))
    with pytest.raises(tool.ExerciseError, match="Exercise 1 has no line 'Checked: yes'"):
        tool.exercises(path)
    # The set-up imports what only the solution uses: unused in the student version.
    test = (
        '""" # BEGIN TEST CONFIG\nfailure_message: ' + "a hint " * 13 + '\n""" # END TEST CONFIG\n\n\n'
        'def test_ex1(answer):\n    assert answer, "hint"\n\n\ntest_ex1(answer)'
    )
    solution = [
        ("raw", "# BEGIN SOLUTION"),
        ("code", "answer = os.sep  # SOLUTION"),
        ("raw", "# END SOLUTION"),
    ]
    path = notebook_with(
        tmp_path, CONFIG, ("code", "import os"), *exercise(1, "ex1", "yes", [test], solution)
    )
    with pytest.raises(tool.ExerciseError, match="would fail `make lint`") as e:
        tool.generate(path)
    assert "F401" in str(e.value) and "E501" in str(e.value) and "inside a solution block" in str(e.value)


def test_count_is_a_table_of_every_solutions_notebook():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tool.main(["--count"])
    rows = [line.split("|")[1:-1] for line in out.getvalue().splitlines()[2:]]
    counts = {name.strip(): [int(c.split()[0]) for c in cols] for name, *cols in rows}
    exs = {path.stem: tool.exercises(path) for path in SOURCES}
    for stem, found in exs.items():
        assert counts[stem] == [len(found), sum(e.checked for e in found), sum(not e.checked for e in found)]
    total, checked, _ = counts["all"]
    assert code == 0 and total == sum(map(len, exs.values()))
    assert checked >= 2 * total / 3, "at least two thirds of the exercises must have checks"


# -- every solutions notebook ----------------------------------------------------------------------


def lecture_exercises(notebook: Path) -> dict[int, str]:
    """The numbered items of a lecture notebook's "## Exercises" cell, whitespace collapsed."""
    items: dict[int, list[str]] = {}
    cell = next(
        c for c in cells(notebook) if c.cell_type == "markdown" and c.source.startswith("## Exercises")
    )
    for line in cell.source.splitlines()[1:]:
        if m := re.match(r"^(\d+)\.\s+(.*)$", line):
            items[int(m[1])] = [m[2]]
        elif items:
            items[max(items)].append(line)
    return {n: " ".join(" ".join(text).split()) for n, text in items.items()}


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_exercises_are_the_lectures_and_each_test_cell_calls_its_test(notebook):
    assert tool.problems(notebook) == []
    lecture = lecture_exercises(ROOT / "notebooks" / notebook.name)
    assert {ex.number: ex.text for ex in tool.exercises(notebook)} == lecture, (
        f"not as notebooks/{notebook.name}"
    )
    # As otter does: the test function, then its call with the globals of the names it reads.
    for cell in [cell for cell, block in blocks(notebook) if block == "TESTS" and cell.cell_type == "code"]:
        body = ast.parse(cell.source).body
        body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
        assert len(body) == 2 and isinstance(body[0], ast.FunctionDef), "a test function, then its call"
        fn, call, params = body[0], getattr(body[1], "value", None), [a.arg for a in body[0].args.args]
        assert (
            isinstance(call, ast.Call)
            and getattr(call.func, "id", None) == fn.name
            and [getattr(a, "id", None) for a in call.args] == params
            and not call.keywords
        ), f"{notebook.name}: {fn.name} must be called as {fn.name}({', '.join(params)})"


def answer_names(notebook: Path) -> dict[str, set[str]]:
    """Per exercise question, the names its answer cells in the student notebook bind."""
    names: dict[str, set[str]] = {}
    for cell in cells(notebook):
        if cell.cell_type == "markdown" and (m := tool.EXERCISE.match(cell.source.strip().split("\n")[0])):
            current = names.setdefault(f"ex{m[1]}", set())
        if cell.cell_type == "code" and "otter_answer_cell" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node]
                current |= {getattr(t, "id", getattr(t, "name", None)) for t in targets} - {None}
    return names


def literals(node: ast.AST) -> list[object]:
    """Constants in an expression, leaving out subscripts (dict keys) and 0, 1, None, True, False."""
    skip = {id(n) for s in ast.walk(node) if isinstance(s, ast.Subscript) for n in ast.walk(s.slice)}
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and id(n) not in skip and n.value not in (0, 1, None, True, False)
    ]


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_each_check_reads_empty_answers_of_its_exercise_and_can_print_a_hint_only(notebook):
    nb, stem = student(notebook.stem), notebook.stem
    checked = [ex.question for ex in tool.exercises(notebook) if ex.checked]
    checks = [m[1] for c in cells(nb) if c.cell_type == "code" and (m := CHECK_CELL.match(c.source))]
    assert checks == checked, "a grader.check cell after each checked exercise"
    assert sorted({path.stem for path, _ in check_functions(stem)}) == sorted(checks)
    names, read_by = answer_names(nb), {}
    for path, fn in check_functions(stem):
        wanted = {a.arg for a in fn.args.args} - {"env"}
        missing = sorted(wanted - names[path.stem])
        assert wanted and not missing, (
            f"{path.relative_to(ROOT)}: {fn.name} reads {missing}, which no answer cell of {path.stem} "
            f"in exercises/{notebook.name} leaves empty for the student to fill in"
        )
        for name in wanted:
            read_by.setdefault(name, set()).add(path.stem)
        (deco,) = fn.decorator_list
        hint = next((k.value for k in deco.keywords if k.arg == "failure_message"), None)
        assert isinstance(hint, ast.Constant) and hint.value, f"{path.name}: {fn.name} has no failure_message"
        for node in [node for node in ast.walk(fn) if isinstance(node, ast.Assert)]:
            where = f"{path.relative_to(ROOT)}, line {node.lineno}"
            assert isinstance(node.msg, ast.Constant) and isinstance(node.msg.value, str), (
                f"{where}: an assert's message must be a fixed hint, never a computed value"
            )
            assert not literals(node.test), (
                f"{where}: the failing line is shown to the student; compare with a name "
                f"(ok = ...; assert ok, 'hint'), not with {literals(node.test)}"
            )
    # A check reads the notebook's globals when it runs: a name that two questions answer would make
    # an earlier question's check fail once a later answer has overwritten it.
    shared = {name: sorted(qs) for name, qs in read_by.items() if len(qs) > 1}
    assert not shared, f"exercises/{notebook.name}: names that several questions' checks read: {shared}"


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_every_check_fails_on_the_empty_answers_with_a_hint(notebook, tmp_path):
    """Every code cell of the student version in order, in a copy of exercises/, as a student runs it;
    neither the notebook nor a failing check shows a line of the solution."""
    stem, results, namespace, secret = notebook.stem, {}, {"__name__": "__main__"}, solution_lines(notebook)
    leaked = sorted(line for line in secret if line in "\n".join(c.source for c in cells(student(stem))))
    assert not leaked, f"exercises/{notebook.name} shows lines of the solutions: {leaked[:5]}"
    shutil.copyfile(student(stem), tmp_path / f"{stem}.ipynb")
    shutil.copytree(tool.EXERCISES / "tests" / stem, tmp_path / "tests" / stem)
    # otter logs to .OTTER_LOG in the folder it runs in
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        for cell in [c for c in cells(tmp_path / f"{stem}.ipynb") if c.cell_type == "code"]:
            if m := CHECK_CELL.match(cell.source):
                results[m[1]] = eval(cell.source, namespace)
            else:
                exec(compile(cell.source, f"{stem}.ipynb", "exec"), namespace)
    assert sorted(results) == sorted({path.stem for path, _ in check_functions(stem)})
    for question, result in results.items():
        shown = repr(result) + result._repr_html_()  # what the notebook shows, as text and as HTML
        assert not result.passed_all, f"{question} passes on the empty answer"
        failed = [r for r in result.test_case_results if not r.passed]
        assert all(r.test_case.failure_message in shown for r in failed), f"{question}: no hint shown"
        leaked = [line for line in secret if line in shown]
        assert not leaked, f"{question}: a failing check shows lines of the solution: {leaked[:3]}"

"""The exercises: solutions/ (the instructor's otter-assign sources) and exercises/ (what students get).

For every solutions notebook found in solutions/:

- the student version and its checks in exercises/ are exactly what ``tools/exercises.py``
  generates (and an edited source makes ``--check`` fail, naming the file);
- every exercise states the lecture notebook's text, says whether it is checked, and a checked
  exercise has tests, and an open one has none;
- the student notebook holds no line of any solution, and every name a check reads is left in it
  as an empty answer (``name = ...`` or a stub ``def``/``class``) under its exercise, by one
  exercise only (the checks read the notebook's globals when they run);
- run as a student gets it (every code cell in order, in this process, from a copy of the
  folder), every check fails on the empty answers, with a hint, and shows no solution line;
- the checks cannot print an expected value: their ``assert`` lines compare no literal, and their
  messages are fixed hints;
- every test cell of a solutions notebook calls its test function with the globals of the same
  names, as otter does, so the notebook tier (nbval over solutions/, ``make test``) runs each check
  on the executed solution and fails if it does not pass.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from repo_scripts import script

ROOT = Path(__file__).resolve().parent.parent
tool = script("tools/exercises.py", "exercises_tool")

SOURCES = tool.sources()
IDS = [p.stem for p in SOURCES]
CHECK_CELL = re.compile(r'^grader\.check\("(ex\d+)"\)$')
MARK = re.compile(r"#\s*SOLUTION( NO PROMPT)?\s*$")


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def solution_lines(notebook: Path) -> set[str]:
    """The lines of a solutions notebook that the student version must not hold: every line of a
    Markdown cell in a solution block, and in its code cells each line between ``# BEGIN SOLUTION``
    and ``# END SOLUTION`` or ending in ``# SOLUTION`` (without the mark); lines that a visible cell
    holds too, and short ones, aside."""
    hidden, shown, block = set(), set(), []
    for cell in cells(notebook):
        m = tool.BLOCK.match(source(cell)) if cell["cell_type"] == "raw" else None
        if m:
            block = [*block, m[2].upper()] if m[1].upper() == "BEGIN" else block[:-1]
            continue
        lines = [line.strip() for line in source(cell).splitlines()]
        if not (block and block[-1] == "SOLUTION"):
            shown.update(lines)
        elif cell["cell_type"] == "markdown":
            hidden.update(lines)
        else:
            inside = False
            for line in lines:
                if re.match(r"#\s*(BEGIN|END) SOLUTION", line):
                    inside = line.startswith("# BEGIN") or line.startswith("#BEGIN")
                elif inside or MARK.search(line):
                    hidden.add(MARK.sub("", line).strip())
                else:
                    shown.add(line)
    return {line for line in hidden - shown if len(line) >= 12}


def student(stem: str) -> Path:
    return tool.EXERCISES / f"{stem}.ipynb"


def check_files(stem: str) -> list[Path]:
    return sorted((tool.EXERCISES / "tests" / stem).glob("*.py"))


def check_functions(path: Path) -> list[ast.FunctionDef]:
    return [node for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)]


# -- the tool ------------------------------------------------------------------------------------


def test_there_are_solutions_notebooks():
    assert SOURCES, "solutions/ holds no NN_topic.ipynb"


def test_student_versions_are_what_the_solutions_generate():
    found = tool.check()
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> tuple[Path, Path]:
    """solutions/ and exercises/ for the first solutions notebook, in a folder of their own."""
    base = tmp_path_factory.mktemp("exercises")
    first = SOURCES[0]
    (base / "solutions").mkdir()
    shutil.copyfile(first, base / "solutions" / first.name)
    (base / "exercises").mkdir()
    for rel in [
        Path(f"{first.stem}.ipynb"),
        *(p.relative_to(tool.EXERCISES) for p in check_files(first.stem)),
    ]:
        (base / "exercises" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tool.EXERCISES / rel, base / "exercises" / rel)
    return base / "solutions" / first.name, base / "exercises"


def run_check(solutions: Path, exercises: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = tool.main(["--check", "--solutions", str(solutions), "--exercises", str(exercises)])
    return code, err.getvalue()


def test_check_names_an_edited_solution(copy):
    nb_path, exercises = copy
    assert run_check(nb_path.parent, exercises) == (0, "")
    original = nb_path.read_text()
    nb = json.loads(original)
    # The first "# SOLUTION" line: a new answer there changes nothing a student sees...
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "# SOLUTION\n" in source(c) + "\n")
    lines = source(cell).splitlines()
    i = next(i for i, line in enumerate(lines) if line.endswith("# SOLUTION"))
    lines[i] = lines[i].split("=")[0] + "= None  # SOLUTION"
    cell["source"] = "\n".join(lines)
    nb_path.write_text(json.dumps(nb, indent=1) + "\n")
    try:
        assert run_check(nb_path.parent, exercises) == (0, "")
        # ... but an edited exercise text, or a new check, does: the check names the file.
        for c in nb["cells"]:
            if c["cell_type"] == "markdown" and tool.EXERCISE.match(source(c).splitlines()[0]):
                c["source"] = source(c).replace("Checked: yes.", "Checked: yes. Edited.", 1)
                break
        nb_path.write_text(json.dumps(nb, indent=1) + "\n")
        code, err = run_check(nb_path.parent, exercises)
        assert code == 1 and f"{nb_path.stem}.ipynb differs from what" in err and "make exercises" in err
    finally:
        nb_path.write_text(original)
    assert run_check(nb_path.parent, exercises) == (0, "")


def test_check_names_a_missing_and_a_stale_file(copy):
    nb_path, exercises = copy
    tests = exercises / "tests" / nb_path.stem
    first = sorted(tests.glob("*.py"))[0]
    kept = first.read_bytes()
    first.unlink()
    (tests / "ex99.py").write_text("name = 'ex99'\n")
    try:
        code, err = run_check(nb_path.parent, exercises)
        assert code == 1 and f"{first.name} is missing" in err and "ex99.py is stale" in err
        with contextlib.redirect_stdout(io.StringIO()):
            assert tool.main(["--solutions", str(nb_path.parent), "--exercises", str(exercises)]) == 0
        assert first.read_bytes() == kept and not (tests / "ex99.py").exists()
    finally:
        first.write_bytes(kept)
        (tests / "ex99.py").unlink(missing_ok=True)


def notebook_with(tmp_path: Path, config: str, *cells: tuple[str, str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_raw_cell(config)]
    for kind, text in cells:
        nb.cells.append(getattr(nbformat.v4, f"new_{kind}_cell")(text))
    path = tmp_path / "07_toy.ipynb"
    nbformat.write(nb, path)
    return path


CONFIG = "# ASSIGNMENT CONFIG\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in tool.REQUIRED_CONFIG.items())


@pytest.mark.parametrize(
    "change, said",
    [
        ("generate: true", "generate: True"),
        ("export_cell: true", "export_cell: True"),
        ("tests: {files: false, ok_format: false}", "tests: {'files': False"),
        ("requirements: requirements.txt", "sets requirements"),
    ],
)
def test_a_config_for_gradescope_is_refused_with_what_to_write(tmp_path, change, said):
    key = change.split(":")[0]
    config = "\n".join(line for line in CONFIG.splitlines() if not line.startswith(key + ":"))
    path = notebook_with(tmp_path, config + "\n" + change)
    with pytest.raises(tool.ExerciseError, match="config must hold") as e:
        tool.assignment_config(path)
    assert said in str(e.value) and "generate: false" in str(e.value)


def test_a_config_without_the_cell_is_refused(tmp_path):
    path = notebook_with(tmp_path, "just a raw cell")
    with pytest.raises(tool.ExerciseError, match="found 0 raw cells '# ASSIGNMENT CONFIG'"):
        tool.assignment_config(path)


QUESTION = ("raw", "# BEGIN QUESTION\nname: {name}"), ("raw", "# END QUESTION")
TESTS = (
    ("raw", "# BEGIN TESTS"),
    ("code", "def test(x):\n    assert x, 'hint'\n\n\ntest(x)"),
    ("raw", "# END TESTS"),
)


@pytest.mark.parametrize(
    "layout, found",
    [
        ([("ex1", "yes", True), ("ex2", "no", False)], []),
        ([("ex1", "yes", False)], ["says 'Checked: yes', but ex1 has no test cell"]),
        ([("ex1", "no", True)], ["says 'Checked: no', but ex1 has tests"]),
        ([("ex2", "no", False)], ["numbered [2], not 1, 2, ...", "Exercise 2 is in question 'ex1'"]),
        ([(None, "no", False)], ["Exercise 1 is outside every question block"]),
    ],
    ids=["good", "checked-without-tests", "open-with-tests", "misnumbered", "outside"],
)
def test_layout_problems_are_named(tmp_path, layout, found):
    parts = []
    for n, (name, checked, tests) in enumerate(layout, start=1):
        number = int(name[2:]) if name else n
        text = ("markdown", f"## Exercise {number}\n\n(easy) Text.\n\nChecked: {checked}.")
        if name is None:
            parts.append(text)
            continue
        begin, end = QUESTION
        parts += [(begin[0], begin[1].format(name=f"ex{n}")), text, *(TESTS if tests else ()), end]
    path = notebook_with(tmp_path, CONFIG, *parts)
    problems = tool.problems(path)
    assert len(problems) == len(found) and all(f in p for f, p in zip(found, problems)), problems


def test_a_student_version_that_would_fail_lint_is_refused_with_the_fix(tmp_path):
    # The set-up imports what only the solution uses: unused in the student version.
    test = (
        '""" # BEGIN TEST CONFIG\nfailure_message: ' + "a hint " * 13 + '\n""" # END TEST CONFIG\n\n\n'
        'def test_ex1(answer):\n    assert answer, "hint"\n\n\ntest_ex1(answer)'
    )
    path = notebook_with(
        tmp_path,
        CONFIG,
        ("code", "import os"),
        QUESTION[0],
        ("markdown", "## Exercise 1\n\n(easy) Text.\n\nChecked: yes."),
        ("raw", "# BEGIN SOLUTION"),
        ("code", "answer = os.sep  # SOLUTION"),
        ("raw", "# END SOLUTION"),
        ("raw", "# BEGIN TESTS"),
        ("code", test),
        ("raw", "# END TESTS"),
        QUESTION[1],
    )
    path.write_text(path.read_text().replace("{name}", "ex1"))
    with pytest.raises(tool.ExerciseError, match="would fail `make lint`") as e:
        tool.generate(path)
    assert "F401" in str(e.value) and "E501" in str(e.value) and "inside a solution block" in str(e.value)


def test_an_exercise_without_its_checked_line_is_refused(tmp_path):
    path = notebook_with(tmp_path, CONFIG, ("markdown", "## Exercise 1\n\n(easy) Text."))
    with pytest.raises(tool.ExerciseError, match="Exercise 1 has no line 'Checked: yes'"):
        tool.exercises(path)


def test_count_is_a_table_of_every_solutions_notebook():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tool.main(["--count"]) == 0
    rows = [line.split("|")[1:-1] for line in out.getvalue().splitlines()[2:]]
    counts = {name.strip(): [int(c.split()[0]) for c in cols] for name, *cols in rows}
    for path in SOURCES:
        exs = tool.exercises(path)
        assert counts[path.stem] == [len(exs), sum(e.checked for e in exs), sum(not e.checked for e in exs)]
    total, checked, _ = counts["all"]
    assert total == sum(len(tool.exercises(p)) for p in SOURCES)
    assert checked >= 2 * total / 3, "at least two thirds of the exercises must have checks"


# -- every solutions notebook ----------------------------------------------------------------------


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_exercises_are_the_lectures_in_its_order(notebook):
    assert tool.problems(notebook) == []
    lecture = tool.lecture_exercises(tool.NOTEBOOKS / notebook.name)
    ours = {ex.number: ex.text for ex in tool.exercises(notebook)}
    assert sorted(ours) == sorted(lecture), "one question per exercise of the lecture notebook"
    for n, text in lecture.items():
        assert ours[n] == text, f"Exercise {n} is not stated as in notebooks/{notebook.name}"


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_the_student_notebook_holds_no_solution(notebook):
    text = "\n".join(source(c) for c in cells(student(notebook.stem)))
    leaked = sorted(line for line in solution_lines(notebook) if line in text)
    assert not leaked, f"exercises/{notebook.name} shows lines of the solutions: {leaked[:5]}"


def answer_names(notebook: Path) -> dict[str, set[str]]:
    """Per exercise question, the names its answer cells in the student notebook bind."""
    names: dict[str, set[str]] = {}
    current = None
    for cell in cells(notebook):
        lines = source(cell).strip().splitlines()
        if cell["cell_type"] == "markdown" and lines and (m := tool.EXERCISE.match(lines[0])):
            current = f"ex{m[1]}"
            names[current] = set()
        if cell["cell_type"] != "code" or "otter_answer_cell" not in cell["metadata"].get("tags", []):
            continue
        for node in ast.parse(source(cell)).body:
            if isinstance(node, ast.Assign):
                names[current] |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                names[current].add(node.name)
    return names


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_each_check_reads_the_answers_left_empty_under_its_exercise(notebook):
    nb = student(notebook.stem)
    checked = [ex for ex in tool.exercises(notebook) if ex.checked]
    checks = [m[1] for c in cells(nb) if c["cell_type"] == "code" and (m := CHECK_CELL.match(source(c)))]
    assert checks == [ex.question for ex in checked], "a grader.check cell after each checked exercise"
    assert [p.stem for p in check_files(notebook.stem)] == sorted(checks)
    names, read_by = answer_names(nb), {}
    for path in check_files(notebook.stem):
        for fn in check_functions(path):
            wanted = {a.arg for a in fn.args.args} - {"env"}
            missing = wanted - names[path.stem]
            assert wanted and not missing, (
                f"{path.relative_to(ROOT)}: {fn.name} reads {sorted(missing)}, which the answer cells of "
                f"{path.stem} in exercises/{notebook.name} do not leave for the student to fill in"
            )
            for name in wanted:
                read_by.setdefault(name, set()).add(path.stem)
    # A check reads the notebook's globals when it runs: a name that two questions answer would make
    # an earlier question's check fail once a later answer has overwritten it.
    shared = {name: sorted(qs) for name, qs in read_by.items() if len(qs) > 1}
    assert not shared, f"exercises/{notebook.name}: names that several questions' checks read: {shared}"


def literals(node: ast.AST) -> list[object]:
    """Constants in an expression, leaving out subscripts (dict keys) and 0, 1, None, True, False."""
    skip = {id(n) for s in ast.walk(node) if isinstance(s, ast.Subscript) for n in ast.walk(s.slice)}
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and id(n) not in skip and n.value not in (0, 1, None, True, False)
    ]


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_a_failing_check_can_print_a_hint_only(notebook):
    for path in check_files(notebook.stem):
        for fn in check_functions(path):
            (deco,) = fn.decorator_list
            hint = next((k.value for k in deco.keywords if k.arg == "failure_message"), None)
            assert isinstance(hint, ast.Constant) and hint.value, (
                f"{path.name}: {fn.name} has no failure_message"
            )
            for node in ast.walk(fn):
                if not isinstance(node, ast.Assert):
                    continue
                where = f"{path.relative_to(ROOT)}, line {node.lineno}"
                assert isinstance(node.msg, ast.Constant) and isinstance(node.msg.value, str), (
                    f"{where}: an assert's message must be a fixed hint, never a computed value"
                )
                assert not literals(node.test), (
                    f"{where}: the failing line is shown to the student; compare with a name "
                    f"(ok = ...; assert ok, 'hint'), not with {literals(node.test)}"
                )


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_every_test_cell_calls_its_test_as_otter_does(notebook):
    block = []
    for cell in cells(notebook):
        m = tool.BLOCK.match(source(cell)) if cell["cell_type"] == "raw" else None
        if m:
            block = [*block, m[2].upper()] if m[1].upper() == "BEGIN" else block[:-1]
            continue
        if not (block and block[-1] == "TESTS" and cell["cell_type"] == "code"):
            continue
        body = ast.parse(source(cell)).body
        body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
        assert len(body) == 2 and isinstance(body[0], ast.FunctionDef), "a test function, then its call"
        fn, call = body[0], body[1].value if isinstance(body[1], ast.Expr) else None
        params = [a.arg for a in fn.args.args]
        ok = (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == fn.name
            and [a.id for a in call.args if isinstance(a, ast.Name)] == params
            and not call.keywords
        )
        assert ok, f"{notebook.name}: {fn.name} must be called as {fn.name}({', '.join(params)})"


# -- the student notebooks, run ------------------------------------------------------------------


def run_as_student(notebook: Path, folder: Path) -> dict[str, object]:
    """Run every code cell of the student version in order, in a copy of exercises/; the results of
    the grader.check cells by question."""
    stem = notebook.stem
    shutil.copyfile(student(stem), folder / f"{stem}.ipynb")
    shutil.copytree(tool.EXERCISES / "tests" / stem, folder / "tests" / stem)
    results, namespace = {}, {"__name__": "__main__"}
    with contextlib.chdir(folder), contextlib.redirect_stdout(io.StringIO()):  # otter logs to .OTTER_LOG here
        for cell in cells(folder / f"{stem}.ipynb"):
            if cell["cell_type"] != "code":
                continue
            code = source(cell)
            if m := CHECK_CELL.match(code):
                results[m[1]] = eval(code, namespace)
            else:
                exec(compile(code, f"{stem}.ipynb", "exec"), namespace)
    return results


@pytest.mark.parametrize("notebook", SOURCES, ids=IDS)
def test_every_check_fails_on_the_empty_answers_with_a_hint(notebook, tmp_path):
    results = run_as_student(notebook, tmp_path)
    assert sorted(results) == sorted(ex.question for ex in tool.exercises(notebook) if ex.checked)
    secret = solution_lines(notebook)
    for question, result in results.items():
        shown = repr(result) + result._repr_html_()  # what the notebook shows, as text and as HTML
        assert not result.passed_all, f"{question} passes on the empty answer"
        failed = [r for r in result.test_case_results if not r.passed]
        assert all(r.test_case.failure_message in shown for r in failed), f"{question}: no hint shown"
        leaked = [line for line in secret if line in shown]
        assert not leaked, f"{question}: a failing check shows lines of the solution: {leaked[:3]}"

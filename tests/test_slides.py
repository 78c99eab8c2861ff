"""tools/slides.py and the slide metadata of the notebooks: every section a slide, every validation
cell skipped and collapsed, every other cell shown, and the checks still where they run."""

import ast
import re
from pathlib import Path

import nbformat
import pytest
from repo_scripts import script

ROOT = Path(__file__).resolve().parent.parent
slides = script("tools/slides.py")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Tags with which a runner would not run a cell, or a site would drop its code: none may hide a check.
NOT_RUN = {"nbval-skip", "skip-execution", "remove-cell", "remove-input", "raises-exception"}


def read(nb: Path):
    return nbformat.read(nb, as_version=4)


def slide_type(cell) -> str | None:
    return cell.metadata.get("slideshow", {}).get("slide_type")


def is_restore(cell) -> bool:
    return cell.cell_type == "code" and "restore" in cell.metadata.get("tags", [])


def hidden(cell) -> bool:
    return bool(cell.metadata.get("jupyter", {}).get("source_hidden"))


def test_check_passes_on_the_repository(capsys):
    """The metadata of every notebook is what the rules give, and no slide is too long to read."""
    code, out = slides.main(["--check"]), capsys.readouterr()
    assert code == 0 and f"{len(NOTEBOOKS)} notebooks carry the slide metadata" in out.out, out.err


# Only level 1-3 headings outside code fences need a cell of their own.
SECTION = "## A section\n\nThe claim.\n\n```python\n# a comment, no heading\n```\n\n#### A paragraph title"
RESTORE = """if "x" not in globals():  # after a restart: what the section before made
    x = torch.ones(3)"""


@pytest.fixture
def toy(tmp_path) -> Path:
    """A small lecture notebook: title, set-up, a section with a restore cell (it re-creates, only when
    missing after a kernel restart, what earlier sections made), code, its check and a plot, and a
    subsection."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Toy\n\nWhat it shows.", id="title"),
        nbformat.v4.new_code_cell("import torch", id="setup"),
        nbformat.v4.new_markdown_cell(SECTION, id="section"),
        nbformat.v4.new_code_cell(RESTORE, id="restore", metadata={"tags": ["restore"]}),
        nbformat.v4.new_code_cell("x = torch.ones(3)\nx.sum()", id="code"),
        nbformat.v4.new_code_cell("assert x.sum() == 3  # the claim", id="code-check"),
        nbformat.v4.new_code_cell("d2l.plot(x)", id="plot", metadata={"tags": ["fragment"]}),
        nbformat.v4.new_markdown_cell("### A subsection", id="sub"),
        nbformat.v4.new_code_cell("def helper(n):\n    if n < 0:\n        raise ValueError(n)\n    return n",
                                  id="arg", metadata={"tags": ["check"]}),
        nbformat.v4.new_code_cell("y = helper(2)\ny", id="long", metadata={"tags": ["subslide"]}),
    ]  # fmt: skip
    path = tmp_path / "07_toy.ipynb"
    nbformat.write(nb, path)
    assert slides.main([str(path)]) == 0
    return path


def test_the_rules_on_a_toy_notebook(toy):
    nb = read(toy)
    assert [slide_type(c) for c in nb.cells] == [
        "slide", "-", "slide", "skip", "-", "skip", "fragment", "subslide", "skip", "subslide"
    ]  # fmt: skip
    assert [hidden(c) for c in nb.cells] == [False] * 3 + [True, False, True, False, False, True, False]
    assert [c.metadata.get("tags") for c in nb.cells[3:9]] == [
        ["restore", "hide-input"], None, ["hide-input"], ["fragment"], None, ["check", "hide-input"]
    ]  # fmt: skip
    assert is_restore(nb.cells[3]) and slides.is_validation(nb.cells[3])
    # RISE's sections: the title slide, the section with one fragment, two subslides of it.
    assert [(s.h, s.v, s.cells, s.fragments) for s in slides.sections(nb)] == [
        (0, 0, [0, 1], 0), (1, 0, [2, 3, 4, 5, 6], 1), (1, 1, [7, 8], 0), (1, 2, [9], 0)
    ]  # fmt: skip
    assert slides.steps(nb) == 5
    before = toy.read_bytes()
    assert slides.main([str(toy)]) == 0 and toy.read_bytes() == before  # writing again changes nothing


def mutate(path: Path, index: int, change) -> None:
    nb = read(path)
    change(nb.cells[index])
    nbformat.write(nb, path)


def set_type(kind):
    return lambda cell: cell.metadata["slideshow"].update(slide_type=kind)


def tag(*names):
    return lambda cell: cell.metadata.__setitem__("tags", list(names))


def set_source(text):
    return lambda cell: setattr(cell, "source", text)


# A difference from the rules, which writing fixes: (cell, change, what the rules give).
DIFFERENCES = {
    "section-not-a-slide": (2, set_type("-"), "'slide_type': 'slide'"),
    "subsection-a-slide": (7, set_type("slide"), "'slide_type': 'subslide'"),
    "fragment-lost": (6, set_type("-"), "'slide_type': 'fragment'"),
    "check-shown": (5, lambda cell: cell.metadata.pop("jupyter"), "'source_hidden': True"),
    "hide-input-lost": (5, tag(), "'tags': ['hide-input']"),
    "check-untagged": (8, tag("hide-input"), "'slide_type': '-'"),
    "restore-untagged": (3, tag("hide-input"), "'slide_type': '-'"),  # lecture code again
    "code-tagged-check": (4, tag("check"), "'slide_type': 'skip'"),
    "new-assert-only-cell": (1, set_source("assert torch.ones(1).item() == 1"), "'slide_type': 'skip'"),
}
# A cell the rules cannot place, which writing refuses too.
UNPLACED = {
    "heading-inside": (2, set_source("The claim.\n\n## A section"), "the heading '## A section'"),
    "check-on-markdown": (2, tag("check"), "tag 'check' on a markdown cell"),
    "subslide-on-check": (5, tag("subslide"), "tag 'subslide' on a cell whose place"),
    "fragment-on-heading": (7, tag("fragment"), "tag 'fragment' on a cell whose place"),
    "both": (4, tag("subslide", "fragment"), "together: keep one"),
    "restore-on-markdown": (2, tag("restore"), "tag 'restore' on a markdown cell"),
    "subslide-on-restore": (3, tag("restore", "subslide"), "tag 'subslide' on a cell whose place"),
    "fragment-on-restore": (3, tag("restore", "fragment"), "tag 'fragment' on a cell whose place"),
}


@pytest.mark.parametrize(
    "index, change, said, fixable",
    [(*case, True) for case in DIFFERENCES.values()] + [(*case, False) for case in UNPLACED.values()],
    ids=[*DIFFERENCES, *UNPLACED],
)
def test_check_names_notebook_cell_and_what_the_rules_give(toy, capsys, index, change, said, fixable):
    mutate(toy, index, change)
    before = toy.read_bytes()
    assert slides.main(["--check", str(toy)]) == 1
    err = capsys.readouterr().err
    assert f"{toy}, cell {index + 1} (id " in err and said in err
    assert ("run `python tools/slides.py`" if fixable else "cannot place these cells") in err
    assert slides.main([str(toy)]) == (0 if fixable else 1)  # writing fixes a difference, nothing else
    assert (toy.read_bytes() != before) is fixable
    assert slides.main(["--check", str(toy)]) == (0 if fixable else 1)


def test_check_refuses_a_slide_too_long_to_read(toy, capsys):
    mutate(toy, 4, set_source("\n".join(f"x{i} = {i}" for i in range(52))))
    assert slides.main([str(toy)]) == 0  # writing is not stopped by it
    assert slides.main(["--check", str(toy)]) == 1
    assert "slide-1-0 (from cell 3) holds 62 lines of source, more than 60" in capsys.readouterr().err
    mutate(toy, 4, tag("subslide"))  # the long cell on its own
    assert slides.main([str(toy)]) == 0 and slides.main(["--check", str(toy)]) == 0


def test_check_names_a_notebook_whose_metadata_was_never_written(tmp_path, capsys):
    path = tmp_path / "07_new.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 07 · New")]), path)
    assert slides.main(["--check", str(path)]) == 1  # it used to end in an AttributeError
    assert "'slide_type': 'slide'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, validation",
    [
        ("assert x == 1", True),
        ("# the claim\nassert x == 1\ntorch.testing.assert_close(a, b)", True),
        ("assert x == 1\nx", False),
        ("x = 1\nassert x == 1", False),
        ("for v in vs:\n    assert v", False),  # loops and set-up need the tag
        ("%matplotlib inline\nassert x", True),  # a magic line is no code
        ("%time assert x", False),
        ("", False),
        ("assert (", False),
    ],
)
def test_a_cell_that_only_asserts_is_a_validation_cell(source, validation):
    assert slides.is_validation(nbformat.v4.new_code_cell(source)) is validation
    assert slides.is_validation(nbformat.v4.new_markdown_cell(source)) is False


def test_sections_follow_rise_on_skipped_cells_first():
    """RISE opens the first slide with the first cell that is neither skipped nor a note, whatever
    its type: a fragment there is no fragment, and skipped cells before it belong to that slide."""
    nb = nbformat.v4.new_notebook()
    kinds = ["skip", "notes", "fragment", "-", "fragment", "subslide", "skip", "slide"]
    nb.cells = [nbformat.v4.new_code_cell("x", metadata={"slideshow": {"slide_type": k}}) for k in kinds]
    assert [(s.h, s.v, s.cells, s.fragments) for s in slides.sections(nb)] == [
        (0, 0, [0, 1, 2, 3, 4], 1), (0, 1, [5, 6], 0), (1, 0, [7], 0)
    ]  # fmt: skip
    assert slides.steps(nb) == 4


def asserts(source: str) -> bool:
    """Whether the code asserts anything: an assert statement or an ``assert_*(...)`` call."""
    for node in ast.walk(ast.parse(source)):
        func = node.func if isinstance(node, ast.Call) else None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if isinstance(node, ast.Assert) or name.startswith("assert"):
            return True
    return False


def guarded(test: ast.expr) -> bool:
    """``"name" not in globals()``, alone or first in an ``or`` (the rest runs only when it exists)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        test = test.values[0]
    return re.fullmatch(r"""["']\w+["'] not in globals\(\)""", ast.unparse(test)) is not None


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_the_lecture_layout_and_the_checks_still_run_where_they_did(nb):
    """One title, first; exercises and references last; unique cell ids. Each check stands right
    after the code it checks and runs in every runner (no tag, magic or comment stops it), and each
    validation cell checks something: it asserts, raises a clear error, or defines an oracle's helper.
    A restore cell stands right after its section's heading (or another restore cell) and works only
    where a name is missing: ``if "name" not in globals():``, optionally ``or`` a test of its value."""
    cells = read(nb).cells
    assert len({c.id for c in cells}) == len(cells), "cell ids name the cells: they must be unique"
    levels = [slides.heading_level(c) for c in cells]  # with the rules, every "##" opens a slide
    assert levels[0] == 1 and 1 not in levels[1:], "one title, the first cell"
    assert [c.source.split("\n")[0] for c in cells[-2:]] == ["## Exercises", "## References"]
    assert any(map(slides.is_validation, cells)), f"{nb.name} has no validation cell"
    for n, cell in enumerate(cells):
        where = f"{nb.name}, cell {n + 1} (id {cell.id})"
        tags = set(cell.metadata.get("tags", []))
        assert not tags & NOT_RUN, f"{where}: tags {tags & NOT_RUN} keep it from running"
        assert not cell.metadata.get("jupyter", {}).get("outputs_hidden"), f"{where}: its outputs hidden"
        if cell.cell_type != "code":
            continue
        assert not re.search(r"^\s*#\s*assert\b", cell.source, re.M), f"{where}: an assert commented out"
        assert not cell.source.lstrip().startswith("%%"), f"{where}: a cell magic may keep it from running"
        if is_restore(cell):
            before, body = cells[n - 1], ast.parse(cell.source).body
            assert is_restore(before) or slides.heading_level(before) == 2, f"{where}: not at its top"
            assert body and all(isinstance(node, ast.If) and guarded(node.test) for node in body), (
                f'{where}: its code is not guarded by `if "name" not in globals():`'
            )
        elif slides.is_validation(cell):
            defines = any(
                isinstance(node, ast.Raise | ast.FunctionDef) for node in ast.walk(ast.parse(cell.source))
            )
            assert asserts(cell.source) or defines, f"{where}: it checks nothing"
            if asserts(cell.source):  # the checks of a result stand right after the code that makes it
                assert cells[n - 1].cell_type == "code", f"{where}: a check after no code"

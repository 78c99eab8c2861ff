"""tools/slides.py and the slide metadata of the notebooks: every section a slide, every validation
cell skipped and collapsed, every other cell shown, and the checks still where they run."""

import ast
import copy
import re
import subprocess
import sys
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


def hidden(cell) -> bool:
    return bool(cell.metadata.get("jupyter", {}).get("source_hidden"))


def asserts(source: str) -> bool:
    """Whether the code asserts anything: an assert statement or an ``assert_*(...)`` call."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name.startswith("assert"):
                return True
    return False


def raises_or_defines(source: str) -> bool:
    """Whether the code raises an error (an argument check) or defines a function (an oracle's helper)."""
    return any(isinstance(node, ast.Raise | ast.FunctionDef) for node in ast.walk(ast.parse(source)))


def test_check_passes_on_the_repository():
    out = subprocess.run(
        [sys.executable, "tools/slides.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(NOTEBOOKS)} notebooks carry the slide metadata" in out.stdout


@pytest.fixture
def toy(tmp_path) -> Path:
    """A small lecture notebook: title, set-up, a section with code, its check and a plot, a subsection."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Toy\n\nWhat it shows.", id="title"),
        nbformat.v4.new_code_cell("import torch", id="setup"),
        nbformat.v4.new_markdown_cell("## A section\n\nThe claim.", id="section"),
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
        "slide", "-", "slide", "-", "skip", "fragment", "subslide", "skip", "subslide"
    ]  # fmt: skip
    assert [hidden(c) for c in nb.cells] == [False] * 4 + [True, False, False, True, False]
    assert [c.metadata.get("tags") for c in nb.cells[4:8]] == [
        ["hide-input"], ["fragment"], None, ["check", "hide-input"]
    ]  # fmt: skip
    # RISE's sections: the title slide, the section with one fragment, two subslides of it.
    assert [(s.h, s.v, s.cells, s.fragments) for s in slides.sections(nb)] == [
        (0, 0, [0, 1], 0), (1, 0, [2, 3, 4, 5], 1), (1, 1, [6, 7], 0), (1, 2, [8], 0)
    ]  # fmt: skip
    assert slides.steps(nb) == 5


def test_writing_again_changes_nothing(toy):
    before = toy.read_bytes()
    assert slides.main([str(toy)]) == 0
    assert toy.read_bytes() == before


def mutate(path: Path, index: int, change) -> None:
    nb = read(path)
    change(nb.cells[index])
    nbformat.write(nb, path)


def set_type(kind):
    return lambda cell: cell.metadata["slideshow"].update(slide_type=kind)


def show(cell):
    del cell.metadata["jupyter"]


def untag(name):
    return lambda cell: cell.metadata.__setitem__("tags", [t for t in cell.metadata.tags if t != name])


def retag(cell):
    cell.metadata.tags = ["check"]


def tag(*names):
    return lambda cell: cell.metadata.__setitem__("tags", list(names))


def add_assert(cell):
    cell.source = "assert torch.ones(1).item() == 1"


@pytest.mark.parametrize(
    "index, change, message",
    [
        (2, set_type("-"), "cell 3 (id section): slide_type is '-', the rules give 'slide'"),
        (6, set_type("slide"), "cell 7 (id sub): slide_type is 'slide', the rules give 'subslide'"),
        (5, set_type("-"), "cell 6 (id plot): slide_type is '-', the rules give 'fragment'"),
        (4, show, "cell 5 (id code-check): source_hidden should be True"),
        (4, untag("hide-input"), "cell 5 (id code-check): the tag 'hide-input' should be there"),
        (7, untag("check"), "cell 8 (id arg): slide_type is 'skip', the rules give '-'"),
        (3, retag, "cell 4 (id code): slide_type is '-', the rules give 'skip'"),
        (1, add_assert, "cell 2 (id setup): slide_type is '-', the rules give 'skip'"),
    ],
    ids=["section-not-a-slide", "subsection-a-slide", "fragment-lost", "check-shown", "hide-input-lost",
         "check-untagged", "code-tagged-check", "new-assert-only-cell"],
)  # fmt: skip
def test_check_names_notebook_cell_and_difference(toy, capsys, index, change, message):
    mutate(toy, index, change)
    assert slides.main(["--check", str(toy)]) == 1
    err = capsys.readouterr().err
    assert f"{toy}, {message}" in err and "run `python tools/slides.py`" in err
    assert slides.main([str(toy)]) == 0  # writing fixes it
    assert slides.main(["--check", str(toy)]) == 0


@pytest.mark.parametrize(
    "index, change, message",
    [
        (2, lambda c: setattr(c, "source", "The claim.\n\n## A section"), "the heading '## A section'"),
        (2, tag("check"), "tag 'check' on a markdown cell"),
        (4, tag("subslide"), "tag 'subslide' on a cell whose place"),
        (6, tag("fragment"), "tag 'fragment' on a cell whose place"),
        (3, tag("subslide", "fragment"), "together: keep one"),
        (2, tag("restore"), "tag 'restore' on a markdown cell"),
        (3, tag("restore", "subslide"), "tag 'subslide' on a cell whose place"),
        (3, tag("restore", "fragment"), "tag 'fragment' on a cell whose place"),
    ],
    ids=["heading-inside", "check-on-markdown", "subslide-on-check", "fragment-on-heading", "both",
         "restore-on-markdown", "subslide-on-restore", "fragment-on-restore"],
)  # fmt: skip
def test_cells_the_rules_cannot_place_are_refused(toy, capsys, index, change, message):
    mutate(toy, index, change)
    before = toy.read_bytes()
    for argv in (["--check", str(toy)], [str(toy)]):
        assert slides.main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and f"cell {index + 1} (id " in err and "cannot place these cells" in err
    assert toy.read_bytes() == before  # nothing written


RESTORE = """if "x" not in globals():  # after a restart: what the section before made
    x = torch.ones(3)"""


def test_a_restore_cell_is_skipped_and_collapsed_like_a_check(toy):
    """A restore cell opens a section and re-creates, only when missing, what earlier sections made:
    after a kernel restart the section runs on its own; in the slides it is one click away."""
    nb = read(toy)
    nb.cells.insert(3, nbformat.v4.new_code_cell(RESTORE, id="restore", metadata={"tags": ["restore"]}))
    nbformat.write(nb, toy)
    assert slides.main([str(toy)]) == 0
    cell = read(toy).cells[3]  # right after the section's heading
    assert slides.is_restore(cell) and slides.is_validation(cell)
    assert slide_type(cell) == "skip" and hidden(cell) and cell.metadata.tags == ["restore", "hide-input"]
    assert slides.steps(read(toy)) == 5  # the presentation is unchanged
    assert slides.main(["--check", str(toy)]) == 0
    mutate(toy, 3, untag("restore"))  # untagged, it is lecture code again
    assert slides.main(["--check", str(toy)]) == 1


def test_check_refuses_a_slide_too_long_to_read(toy, capsys):
    mutate(toy, 3, lambda cell: setattr(cell, "source", "\n".join(f"x{i} = {i}" for i in range(58))))
    assert slides.main([str(toy)]) == 0  # writing is not stopped by it
    assert slides.main(["--check", str(toy)]) == 1
    assert "slide-1-0 (from cell 3) holds 62 lines of source, more than 60" in capsys.readouterr().err
    mutate(toy, 3, lambda cell: cell.metadata.__setitem__("tags", ["subslide"]))  # the long cell on its own
    assert slides.main([str(toy)]) == 0 and slides.main(["--check", str(toy)]) == 0


def test_only_level_1_to_3_headings_outside_code_fences_need_a_cell_of_their_own():
    md = "Text.\n\n```python\n# a comment, no heading\n```\n\n#### A paragraph title\n\n### A subsection"
    assert slides.later_headings(nbformat.v4.new_markdown_cell(md)) == ["### A subsection"]
    assert slides.later_headings({"cell_type": "markdown", "source": md.splitlines(True)}) == [
        "### A subsection"
    ]


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


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_section_is_a_slide(nb):
    cells = read(nb).cells
    assert slide_type(cells[0]) == "slide" and cells[0].source.startswith("# ")
    levels = {n: slides.heading_level(c) for n, c in enumerate(cells)}
    for n, cell in enumerate(cells):
        inside = [line for line in cell.source.splitlines()[1:] if re.match(r"#{1,3}\s", line)]
        assert cell.cell_type == "code" or not inside, f"{nb.name}, cell {n + 1}: a heading inside, {inside}"
        if levels[n] == 2:
            assert slide_type(cell) == "slide", f"{nb.name}, cell {n + 1}: section {cell.source[:40]!r}"
        if levels[n] == 3:
            assert slide_type(cell) == "subslide", f"{nb.name}, cell {n + 1}: {cell.source[:40]!r}"
    # One slide per section and one for the title; nothing else opens a slide.
    sections = [s for s in slides.sections(read(nb)) if s.v == 0]
    assert len(sections) == 1 + sum(level == 2 for level in levels.values())
    assert [cells[s.cells[0]].source.split("\n")[0] for s in sections[1:]] == [
        c.source.split("\n")[0] for c in cells if slides.heading_level(c) == 2
    ]
    # The lecture ends with exercises and references, a slide each.
    assert [c.source.split("\n")[0] for c in cells[-2:]] == ["## Exercises", "## References"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_slide_holds_more_source_than_a_screen_shows(nb):
    assert slides.too_long(read(nb)) == []


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_validation_cells_are_skipped_and_collapsed_and_nothing_else_is(nb):
    cells = read(nb).cells
    checks = [n for n, c in enumerate(cells) if slides.is_validation(c)]
    assert checks, f"{nb.name} has no validation cell"
    for n, cell in enumerate(cells):
        tags = cell.metadata.get("tags", [])
        where = f"{nb.name}, cell {n + 1} (id {cell.id})"
        if n in checks:
            assert slide_type(cell) == "skip" and hidden(cell) and "hide-input" in tags, where
        else:
            assert slide_type(cell) != "skip" and not hidden(cell) and "hide-input" not in tags, where
            assert not cell.metadata.get("jupyter", {}).get("outputs_hidden"), where


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_the_checks_still_run_where_they_did(nb):
    """Each check stands right after the code it checks and runs in every runner: no tag, magic or
    comment keeps it from running, and each validation cell checks something: it asserts, raises a
    clear error where it validates arguments, or defines an oracle's helper."""
    cells = read(nb).cells
    for n, cell in enumerate(cells):
        where = f"{nb.name}, cell {n + 1} (id {cell.id})"
        tags = set(cell.metadata.get("tags", []))
        assert not tags & NOT_RUN, f"{where}: tags {tags & NOT_RUN} keep it from running"
        if cell.cell_type != "code":
            continue
        assert not re.search(r"^\s*#\s*assert\b", cell.source, re.M), f"{where}: an assert commented out"
        assert not cell.source.lstrip().startswith("%%"), f"{where}: a cell magic may keep it from running"
        if slides.is_validation(cell) and not slides.is_restore(cell):
            assert asserts(cell.source) or raises_or_defines(cell.source), f"{where}: it checks nothing"
            if asserts(cell.source):  # the checks of a result stand right after the code that makes it
                assert cells[n - 1].cell_type == "code", f"{where}: a check after no code"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_restore_cells_open_their_section_and_change_nothing_in_a_run_from_the_top(nb):
    """A restore cell stands at the top of its section, right after the ``##`` heading (or another
    restore cell), and does its work only where a name is missing, or holds another section's value:
    ``if "name" not in globals():``, optionally ``or`` a test of that value."""
    cells = read(nb).cells
    for n, cell in enumerate(cells):
        if not slides.is_restore(cell):
            continue
        where = f"{nb.name}, cell {n + 1} (id {cell.id})"
        before = cells[n - 1]
        assert slides.is_restore(before) or slides.heading_level(before) == 2, (
            f"{where}: not at a section's top"
        )
        body = ast.parse(cell.source).body
        assert body and all(isinstance(node, ast.If) and guarded(node.test) for node in body), (
            f'{where}: its code is not guarded by `if "name" not in globals():`'
        )


def guarded(test: ast.expr) -> bool:
    """``"name" not in globals()``, alone or first in an ``or`` (the rest runs only when it exists)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        test = test.values[0]
    return re.fullmatch(r"""["']\w+["'] not in globals\(\)""", ast.unparse(test)) is not None


def test_the_shipped_notebooks_keep_their_cell_ids_unique():
    for nb in NOTEBOOKS:
        ids = [c.id for c in read(nb).cells]
        assert len(ids) == len(set(ids)), nb.name


def test_sections_follow_rise_on_skipped_cells_first():
    """RISE opens the first slide with the first cell that is neither skipped nor a note, whatever
    its type: a fragment there is no fragment, and skipped cells before it belong to that slide."""
    nb = nbformat.v4.new_notebook()
    kinds = ["skip", "fragment", "-", "fragment", "notes", "subslide", "skip", "slide"]
    nb.cells = [nbformat.v4.new_code_cell("x", metadata={"slideshow": {"slide_type": k}}) for k in kinds]
    assert [(s.h, s.v, s.cells, s.fragments) for s in slides.sections(nb)] == [
        (0, 0, [0, 1, 2, 3, 4], 1), (0, 1, [5, 6], 0), (1, 0, [7], 0)
    ]  # fmt: skip
    assert slides.steps(copy.deepcopy(nb)) == 4

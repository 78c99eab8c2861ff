#!/usr/bin/env python3
"""Write, or check, the slide metadata of the lecture notebooks, derived from their cells by rules.

An instructor presents the notebooks with JupyterLab's RISE (jupyterlab-rise: View > Render as
Reveal Slideshow, Alt+R, or the RISE button of the notebook's toolbar), and ``make slides`` exports
them as static reveal.js pages with nbconvert. Both read ``cell.metadata.slideshow.slide_type``; JupyterLab
collapses a cell's source when ``cell.metadata.jupyter.source_hidden`` is true, and Jupyter Book
collapses it for the cell tag ``hide-input``. This tool derives all three, for every cell, by these
rules, the first that applies:

1. A *validation cell* is skipped: slide_type ``skip``, source hidden, tag ``hide-input``. It is a
   code cell tagged ``check`` (an oracle or argument check, a helper that only validates, asserts
   together with what they need), or a code cell whose code is nothing but ``assert`` statements and
   ``assert_*(...)`` calls (``torch.testing.assert_close``). Its code still runs, in order, wherever
   the notebook runs (Run All, nbval, nbconvert); the slides show only the lecture's code and its
   result, and the reader sees the checks one click away. A *restore cell*, a code cell tagged
   ``restore``, is skipped and hidden the same way: it opens a section and, only when a name is
   missing (after a kernel restart in the middle of the lecture), re-creates what earlier sections
   made, replaying their trainings from the run cache, so that the section runs on its own; in a
   run from the top it does nothing.
2. The notebook's first cell (its title) and every markdown cell that opens with a ``##`` heading
   start a ``slide``; one that opens with a ``###`` heading, a ``subslide``.
3. A cell tagged ``subslide`` starts a subslide (a long cell on its own, or a new step of an
   argument that would overflow its slide); one tagged ``fragment`` is a ``fragment``, shown on
   the next key press (a plot or table after the code that makes it).
4. Every other cell continues the slide before it: ``-``.

Every other cell has its source shown (no ``source_hidden``) and no ``hide-input`` tag. A level 1-3
heading on a later line of a markdown cell, or a tag that contradicts the rules (``check`` or
``restore`` on a markdown cell, ``subslide`` or ``fragment`` on a validation, restore or heading
cell), is an error: split the cell at the heading, or drop the tag. Nothing else in a notebook is
touched.

    python tools/slides.py           # write the metadata into notebooks/*.ipynb
    python tools/slides.py --check   # exit 1, naming notebook, cell and difference, if any differs

``--check`` also keeps the slides readable: a (sub)slide may hold at most ``MAX_LINES`` lines of
source (code lines, and markdown lines as wrapped at ``WRAP`` characters), its outputs come on top
(on a 1280x1000 screen about 50 lines of code fit); a longer one needs a cell tagged ``subslide``.

The presentation's structure (which cells share a (sub)slide, and the fragments) follows from the
same metadata as RISE builds it: ``sections`` and ``steps`` below, which the tests use.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHECK, RESTORE, SUBSLIDE, FRAGMENT = "check", "restore", "subslide", "fragment"
HIDE_INPUT = "hide-input"
HEADING = re.compile(r"^(#{1,6})\s")
MAX_LINES, WRAP = 60, 120


class RuleError(ValueError):
    """A cell that the rules cannot place: it needs a split or has a contradictory tag."""


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def source(cell) -> str:
    """A cell's source as one string (nbformat's, or a list of lines as stored on disk)."""
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def heading_level(cell) -> int | None:
    """The level of the heading a markdown cell opens with, or None."""
    if cell["cell_type"] != "markdown":
        return None
    m = HEADING.match(source(cell))
    return len(m[1]) if m else None


def later_headings(cell) -> list[str]:
    """The level 1-3 headings of a markdown cell below its first line (fenced code aside)."""
    found, fenced = [], False
    for line in source(cell).splitlines()[1:]:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)) and len(m[1]) <= 3:
            found.append(line)
    return found


def _only_asserts(source: str) -> bool:
    """Whether the code is nothing but assert statements and ``assert_*(...)`` calls (comments aside)."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        body = ast.parse("\n".join(lines)).body
    except SyntaxError:
        return False

    def asserts(node: ast.stmt) -> bool:
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            return name.startswith("assert")
        return False

    return bool(body) and all(map(asserts, body))


def is_restore(cell) -> bool:
    """A restore cell (rule 1): a code cell tagged ``restore``."""
    return cell["cell_type"] == "code" and RESTORE in tags(cell)


def is_validation(cell) -> bool:
    """Rule 1: a code cell tagged ``check``, or one that only asserts; or a restore cell, skipped alike."""
    return cell["cell_type"] == "code" and (
        CHECK in tags(cell) or is_restore(cell) or _only_asserts(source(cell))
    )


def problems(cell) -> list[str]:
    """What keeps the rules from placing ``cell`` (empty when they can)."""
    found = []
    if cell["cell_type"] == "markdown":
        if later := later_headings(cell):
            found.append(f"the heading {later[0]!r} is not on the cell's first line: split the cell there")
        for tag in sorted({CHECK, RESTORE} & set(tags(cell))):
            found.append(f"tag {tag!r} on a markdown cell: only code cells are validation or restore cells")
    judged = {SUBSLIDE, FRAGMENT} & set(tags(cell))
    if judged and (is_validation(cell) or (heading_level(cell) or 9) <= 3):
        found.append(f"tag {sorted(judged)[0]!r} on a cell whose place the rules decide: drop the tag")
    if len(judged) == 2:
        found.append("tags 'subslide' and 'fragment' together: keep one")
    return found


def slide_type(cell, first: bool) -> str:
    """The slide_type the rules give ``cell`` (``first``: the notebook's first cell)."""
    if is_validation(cell):
        return "skip"
    level = heading_level(cell)
    if first or level in (1, 2):
        return "slide"
    if level == 3 or SUBSLIDE in tags(cell):
        return "subslide"
    if FRAGMENT in tags(cell):
        return "fragment"
    return "-"


@dataclass
class Wanted:
    slide_type: str
    hidden: bool


def wanted(nb) -> list[Wanted]:
    """What the rules give every cell of ``nb``; a RuleError names each cell they cannot place."""
    errors = [f"cell {n} (id {c.get('id')}): {p}" for n, c in enumerate(nb["cells"], 1) for p in problems(c)]
    if errors:
        raise RuleError("; ".join(errors))
    return [Wanted(slide_type(c, n == 0), is_validation(c)) for n, c in enumerate(nb["cells"])]


def differences(nb) -> list[str]:
    """Each cell whose metadata differs from the rules', and how (empty when all agree)."""
    found = []
    for n, (cell, want) in enumerate(zip(nb["cells"], wanted(nb)), 1):
        meta, where = cell.get("metadata", {}), f"cell {n} (id {cell.get('id')})"
        have = meta.get("slideshow", {}).get("slide_type")
        if have != want.slide_type:
            found.append(f"{where}: slide_type is {have!r}, the rules give {want.slide_type!r}")
        if bool(meta.get("jupyter", {}).get("source_hidden", False)) != want.hidden:
            found.append(f"{where}: source_hidden should be {want.hidden}")
        if (HIDE_INPUT in tags(cell)) != want.hidden:
            found.append(f"{where}: the tag 'hide-input' should be {'there' if want.hidden else 'absent'}")
    return found


def apply(nb) -> int:
    """Write the rules' metadata into ``nb``; return the number of cells changed."""
    changed = 0
    for cell, want in zip(nb["cells"], wanted(nb)):
        before = repr(cell.get("metadata", {}))
        meta = cell.setdefault("metadata", {})
        meta.setdefault("slideshow", {})["slide_type"] = want.slide_type
        jupyter = meta.setdefault("jupyter", {})
        if want.hidden:
            jupyter["source_hidden"] = True
        else:
            jupyter.pop("source_hidden", None)
        if not jupyter:
            del meta["jupyter"]
        cell_tags = [t for t in tags(cell) if t != HIDE_INPUT] + ([HIDE_INPUT] if want.hidden else [])
        if cell_tags:
            meta["tags"] = cell_tags
        else:
            meta.pop("tags", None)
        changed += repr(meta) != before
    return changed


@dataclass
class Section:
    """One (sub)slide of the presentation: its position, its cells, and how many fragments it reveals."""

    h: int
    v: int
    cells: list[int] = field(default_factory=list)  # indices into the notebook's cells, skipped ones too
    fragments: int = 0


def sections(nb) -> list[Section]:
    """The (sub)slides RISE builds from the metadata: the first cell that is neither skipped nor a
    note opens the first slide whatever its type; after it, "slide" opens a new slide, "subslide" a
    new subslide and "fragment" a fragment of the current one (jupyterlab-rise 0.43, revealMode)."""
    out = [Section(0, 0)]
    started = False
    for n, cell in enumerate(nb["cells"]):
        kind = cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-")
        if started and kind == "slide":
            out.append(Section(out[-1].h + 1, 0))
        elif started and kind == "subslide":
            out.append(Section(out[-1].h, out[-1].v + 1))
        elif started and kind == "fragment":
            out[-1].fragments += 1
        elif kind not in ("skip", "notes"):
            started = True
        out[-1].cells.append(n)
    return out


def source_lines(nb, section: Section) -> int:
    """The lines of source a (sub)slide shows: code lines, and markdown lines wrapped at WRAP."""
    n = 0
    for i in section.cells:
        cell = nb["cells"][i]
        if cell.get("metadata", {}).get("slideshow", {}).get("slide_type") == "skip":
            continue
        lines = source(cell).splitlines()
        wrapped = sum(max(1, -(-len(line) // WRAP)) for line in lines)  # ceil(len / WRAP), 1 if blank
        n += len(lines) if cell["cell_type"] == "code" else wrapped
    return n


def too_long(nb) -> list[str]:
    """Each (sub)slide that holds more than MAX_LINES lines of source, named by RISE's id."""
    return [
        f"slide-{s.h}-{s.v} (from cell {s.cells[0] + 1}) holds {n} lines of source, more than {MAX_LINES}: "
        "tag a cell in it 'subslide'"
        for s in sections(nb)
        if (n := source_lines(nb, s)) > MAX_LINES
    ]


def steps(nb) -> int:
    """Key presses from the first slide to the end, plus one: every (sub)slide and every fragment."""
    return sum(1 + s.fragments for s in sections(nb))


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report differences and exit 1, write nothing")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks()
    unplaced, differ = [], []
    for path in paths:
        name = (
            path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else str(path)
        )
        nb = nbformat.read(path, as_version=4)
        try:
            if args.check:
                differ += [f"{name}, {d}" for d in differences(nb)]
                unplaced += [f"{name}: {t}" for t in too_long(nb)]
            elif changed := apply(nb):
                nbformat.write(nb, path)
                print(f"{name}: slide metadata written to {changed} cells")
        except RuleError as e:
            unplaced.append(f"{name}: {e}")
    if unplaced:
        print("\n".join(unplaced), file=sys.stderr)
        print("The rules of tools/slides.py cannot place these cells: change them as said.", file=sys.stderr)
    if differ:
        print("\n".join(differ), file=sys.stderr)
        print(
            "The slide metadata differs from what the rules of tools/slides.py give: run "
            "`python tools/slides.py` and commit the result.",
            file=sys.stderr,
        )
    if unplaced or differ:
        return 1
    if args.check:
        print(f"{len(paths)} notebooks carry the slide metadata their rules give.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

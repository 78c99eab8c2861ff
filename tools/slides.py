#!/usr/bin/env python3
"""Write, or check, the slide metadata of the lecture notebooks, derived from their cells by rules.

RISE (jupyterlab-rise) and ``make slides`` read ``cell.metadata.slideshow.slide_type``; JupyterLab
collapses a cell whose ``metadata.jupyter.source_hidden`` is true, Jupyter Book one tagged
``hide-input``. The rules, the first that applies:

1. A validation cell is skipped, its source hidden and tagged ``hide-input`` (it still runs): a code
   cell tagged ``check`` or ``restore`` (it re-creates what earlier sections made, only when a name
   is missing after a kernel restart), or one of nothing but asserts and ``assert_*(...)`` calls.
2. The first cell and every markdown cell opening with ``#`` or ``##`` start a ``slide``; one
   opening with ``###``, a ``subslide``.
3. A cell tagged ``subslide`` starts a subslide, one tagged ``fragment`` is a ``fragment``.
4. Every other cell continues the slide before it: ``-``.

A level 1-3 heading below a markdown cell's first line, or a tag that contradicts the rules, is an
error. ``--check`` also refuses a (sub)slide of more than ``MAX_LINES`` lines of source (markdown
wrapped at ``WRAP`` characters): about what a 1280x1000 screen shows beside the outputs.

    python tools/slides.py           # write the metadata into notebooks/*.ipynb
    python tools/slides.py --check   # exit 1, naming notebook, cell and difference, if any differs
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHECK, RESTORE, SUBSLIDE, FRAGMENT, HIDE_INPUT = "check", "restore", "subslide", "fragment", "hide-input"
HEADING = re.compile(r"^(#{1,6})\s")
MAX_LINES, WRAP = 60, 120


def tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def heading_level(cell) -> int | None:
    """The level of the heading a markdown cell opens with, or None."""
    m = HEADING.match(cell.source) if cell.cell_type == "markdown" else None
    return len(m[1]) if m else None


def later_headings(cell) -> list[str]:
    """The level 1-3 headings of a markdown cell below its first line (fenced code aside)."""
    found, fenced = [], False
    for line in cell.source.splitlines()[1:]:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)) and len(m[1]) <= 3:
            found.append(line)
    return found


def _asserts(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assert):
        return True
    func = node.value.func if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name.startswith("assert")


def is_validation(cell) -> bool:
    """Rule 1: a code cell tagged ``check`` or ``restore``, or one that only asserts (magics aside)."""
    if cell.cell_type != "code":
        return False
    if {CHECK, RESTORE} & set(tags(cell)):
        return True
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()]
    try:
        body = ast.parse("\n".join(lines)).body
    except SyntaxError:
        return False
    return bool(body) and all(map(_asserts, body))


def problems(cell) -> list[str]:
    """What keeps the rules from placing ``cell`` (empty when they can)."""
    found = []
    if cell.cell_type == "markdown":
        found += [
            f"the heading {h!r} is not on the cell's first line: split the cell there"
            for h in later_headings(cell)[:1]
        ]
        found += [
            f"tag {t!r} on a markdown cell: only code cells are validation or restore cells"
            for t in sorted({CHECK, RESTORE} & set(tags(cell)))
        ]
    judged = {SUBSLIDE, FRAGMENT} & set(tags(cell))
    if judged and (is_validation(cell) or (heading_level(cell) or 9) <= 3):
        found.append(f"tag {sorted(judged)[0]!r} on a cell whose place the rules decide: drop the tag")
    if len(judged) == 2:
        found.append("tags 'subslide' and 'fragment' together: keep one")
    return found


def slide_type(cell, first: bool) -> str:
    level = heading_level(cell)
    if is_validation(cell):
        return "skip"
    if first or level in (1, 2):
        return "slide"
    if level == 3 or SUBSLIDE in tags(cell):
        return "subslide"
    return "fragment" if FRAGMENT in tags(cell) else "-"


def apply(nb) -> list[str]:
    """Write the rules' metadata into ``nb``; how each cell it changed differed."""
    changed = []
    for n, cell in enumerate(nb.cells):
        kind, hidden, before = slide_type(cell, n == 0), is_validation(cell), copy.deepcopy(cell.metadata)
        cell.metadata.setdefault("slideshow", {})["slide_type"] = kind
        jupyter = {k: v for k, v in cell.metadata.pop("jupyter", {}).items() if k != "source_hidden"}
        if jupyter or hidden:
            cell.metadata["jupyter"] = jupyter | ({"source_hidden": True} if hidden else {})
        cell.metadata.pop("tags", None)
        if cell_tags := [t for t in before.get("tags", []) if t != HIDE_INPUT] + [HIDE_INPUT] * hidden:
            cell.metadata["tags"] = cell_tags
        if cell.metadata != before:
            changed.append(
                f"cell {n + 1} (id {cell.get('id')}): metadata {before}, the rules give {cell.metadata}"
            )
    return changed


@dataclass
class Section:
    """One (sub)slide of the presentation: its position, its cells, and the fragments it reveals."""

    h: int
    v: int
    cells: list[int] = field(default_factory=list)  # indices into the notebook's cells, skipped ones too
    fragments: int = 0


def sections(nb) -> list[Section]:
    """The (sub)slides RISE builds (jupyterlab-rise 0.43): the first cell neither skipped nor a note
    opens the first slide whatever its type; after it "slide", "subslide" and "fragment" count."""
    out, started = [Section(0, 0)], False
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


def shown_lines(cell) -> int:
    """The lines of source a cell shows on a slide: code lines, markdown lines wrapped at WRAP."""
    lines = cell.source.splitlines() if cell.metadata.slideshow.slide_type != "skip" else []
    return len(lines) if cell.cell_type == "code" else sum(max(1, -(-len(x) // WRAP)) for x in lines)


def too_long(nb) -> list[str]:
    """Each (sub)slide that shows more than MAX_LINES lines of source, named by RISE's id."""
    return [
        f"slide-{s.h}-{s.v} (from cell {s.cells[0] + 1}) holds {n} lines of source, more than {MAX_LINES}: "
        "tag a cell in it 'subslide'"
        for s in sections(nb)
        if (n := sum(shown_lines(nb["cells"][i]) for i in s.cells)) > MAX_LINES
    ]


def steps(nb) -> int:
    """Key presses from the first slide to the end, plus one: every (sub)slide and every fragment."""
    return sum(1 + s.fragments for s in sections(nb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences and exit 1, write nothing")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    unplaced, differ = [], []
    for path in paths:
        name = (
            path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else str(path)
        )
        nb = nbformat.read(path, as_version=4)
        if errors := [
            f"{name}, cell {n} (id {c.get('id')}): {p}"
            for n, c in enumerate(nb.cells, 1)
            for p in problems(c)
        ]:
            unplaced += errors
            continue
        changed = apply(nb)
        if args.check:
            differ += [f"{name}, {d}" for d in changed]
            unplaced += [f"{name}: {t}" for t in too_long(nb)]
        elif changed:
            nbformat.write(nb, path)
            print(f"{name}: slide metadata written to {len(changed)} cells")
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
    if args.check and not (unplaced or differ):
        print(f"{len(paths)} notebooks carry the slide metadata their rules give.")
    return 1 if unplaced or differ else 0


if __name__ == "__main__":
    sys.exit(main())

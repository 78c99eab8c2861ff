#!/usr/bin/env python3
"""Write, or check (``--check``), the slide metadata of the lecture notebooks, derived by rules.

RISE and ``make slides`` read ``slideshow.slide_type``; JupyterLab collapses a cell whose
``jupyter.source_hidden`` is true, Jupyter Book one tagged ``hide-input``. The first rule that applies:

1. A validation cell (a code cell tagged ``check`` or ``restore``, or one of nothing but asserts and
   ``assert_*(...)`` calls) is skipped, its source hidden and tagged ``hide-input``; it still runs.
2. The first cell and every markdown cell opening with ``#`` or ``##`` start a ``slide``; ``###``, a
   ``subslide``.
3. A cell tagged ``subslide`` starts a subslide, one tagged ``fragment`` is a ``fragment``.
4. Every other cell continues the slide before it: ``-``.

A level 1-3 heading below a markdown cell's first line, or a tag that contradicts the rules, is an
error; ``--check`` also refuses a (sub)slide of more than ``MAX_LINES`` lines of source (markdown
wrapped at ``WRAP``): about what a 1280x1000 screen shows beside the outputs.
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
VALIDATION, SUBSLIDE, FRAGMENT, HIDE_INPUT = {"check", "restore"}, "subslide", "fragment", "hide-input"
HEADING = re.compile(r"^(#{1,6})\s")
MAX_LINES, WRAP = 60, 120


def tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


def heading_level(cell) -> int | None:
    """The level of the heading a markdown cell opens with, or None."""
    m = HEADING.match(cell.source) if cell.cell_type == "markdown" else None
    return len(m[1]) if m else None


def _asserts(node: ast.stmt) -> bool:
    func = node.value.func if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return isinstance(node, ast.Assert) or name.startswith("assert")


def is_validation(cell) -> bool:
    """Rule 1: a code cell tagged ``check`` or ``restore``, or one that only asserts (magics aside)."""
    if cell.cell_type != "code":
        return False
    if VALIDATION & tags(cell):
        return True
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()]
    try:
        body = ast.parse("\n".join(lines)).body
    except SyntaxError:
        return False
    return bool(body) and all(map(_asserts, body))


def problems(cell) -> list[str]:
    """What keeps the rules from placing ``cell`` (empty when they can)."""
    found, fenced = [], False
    for line in cell.source.splitlines()[1:] if cell.cell_type == "markdown" else []:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)) and len(m[1]) <= 3:
            found.append(f"the heading {line!r} is not on the cell's first line: split the cell there")
            break
    if cell.cell_type == "markdown":
        found += [
            f"tag {t!r} on a markdown cell: only code cells are validation or restore cells"
            for t in sorted(VALIDATION & tags(cell))
        ]
    judged = sorted({SUBSLIDE, FRAGMENT} & tags(cell))
    if judged and (is_validation(cell) or (heading_level(cell) or 9) <= 3):
        found.append(f"tag {judged[0]!r} on a cell whose place the rules decide: drop the tag")
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
    return FRAGMENT if FRAGMENT in tags(cell) else "-"


def apply(nb) -> list[str]:
    """Write the rules' metadata into ``nb``; how each cell it changed differed."""
    changed = []
    for n, cell in enumerate(nb.cells):
        hidden, before = is_validation(cell), copy.deepcopy(cell.metadata)
        cell.metadata.setdefault("slideshow", {})["slide_type"] = slide_type(cell, n == 0)
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
    """One (sub)slide: its position, its cells (indices, skipped ones too), the fragments it reveals."""

    h: int
    v: int
    cells: list[int] = field(default_factory=list)
    fragments: int = 0


def sections(nb) -> list[Section]:
    """The (sub)slides RISE builds (jupyterlab-rise 0.43): the first cell neither skipped nor a note
    opens the first slide whatever its type; after it "slide", "subslide" and "fragment" count."""
    out, started = [Section(0, 0)], False
    for n, cell in enumerate(nb["cells"]):
        kind = cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-")
        if started and kind == "slide":
            out.append(Section(out[-1].h + 1, 0))
        elif started and kind == SUBSLIDE:
            out.append(Section(out[-1].h, out[-1].v + 1))
        elif started and kind == FRAGMENT:
            out[-1].fragments += 1
        started = started or kind not in ("skip", "notes")
        out[-1].cells.append(n)
    return out


def too_long(nb) -> list[str]:
    """Each (sub)slide showing more than MAX_LINES lines of source (markdown wrapped at WRAP)."""
    found = []
    for s in sections(nb):
        cells = [nb.cells[i] for i in s.cells if nb.cells[i].metadata["slideshow"]["slide_type"] != "skip"]
        lines = [(c.cell_type, line) for c in cells for line in c.source.splitlines()]
        n = sum(1 if kind == "code" else max(1, -(-len(line) // WRAP)) for kind, line in lines)
        if n > MAX_LINES:
            found.append(
                f"slide-{s.h}-{s.v} (from cell {s.cells[0] + 1}) holds {n} lines of source, more than "
                f"{MAX_LINES}: tag a cell in it 'subslide'"
            )
    return found


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
        name = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else path
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
        unplaced.append("The rules of tools/slides.py cannot place these cells: change them as said.")
    if differ:
        differ.append(
            "The slide metadata differs from what the rules of tools/slides.py give: run "
            "`python tools/slides.py` and commit the result."
        )
    if unplaced or differ:
        print(*unplaced, *differ, sep="\n", file=sys.stderr)
        return 1
    if args.check:
        print(f"{len(paths)} notebooks carry the slide metadata their rules give.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

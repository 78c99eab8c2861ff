"""Every section of every lecture notebook stands alone: after a kernel restart in the middle of a
lecture, the notebook's set-up cells and the section's own cells run it (with a warm run cache, its
trainings replay in seconds). Checked on the code: every name a section reads is defined by the
set-up cells (the code cells before the first ``##`` section), by the section itself before it is
needed, or is a builtin. A section that needs what an earlier one trained opens with a cell tagged
``restore`` that makes it again, only where it is missing (tools/slides.py, rule 1).

Order counts: top-level code (and what runs at once inside it: class bodies, comprehensions) reads
a name only after a statement before it, in the set-up or in the section, has bound it; the body of
a function or lambda runs when it is called, so the names it reads may be bound anywhere in the
set-up or the section.

The closing sections of a notebook ("Summary", "This run's numbers", "What this run measured")
collect the measurements of every section; they are the one exception, and with a warm run cache
the whole notebook (Run All) takes seconds. `tools/warm.py --sections` runs every section in a
fresh kernel, which this static check stands in for.
"""

from __future__ import annotations

import ast
import builtins
import symtable
from pathlib import Path

import nbformat
import pytest
from repo_scripts import script

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
warm = script("tools/warm.py")  # the section split that `tools/warm.py --sections` runs
IPYTHON = {"display", "get_ipython", "__class__"}  # __class__: what super() reads in a method
COMPREHENSIONS = {"listcomp", "setcomp", "dictcomp", "genexpr"}  # they run where they stand


def sections(notebook: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The set-up cells' code and each ``##`` section's code, split as `tools/warm.py --sections`
    runs them (the closing sections, which gather every section's numbers, left out)."""
    setup, found = warm.split_sections(nbformat.read(notebook, as_version=4))
    return [c.source for c in setup], {title: [c.source for c in cells] for title, cells in found.items()}


def statements(cells: list[str]) -> list[ast.stmt]:
    """The top-level statements of the cells, in order (IPython magics and shell lines left out)."""
    return [
        node
        for cell in cells
        for node in ast.parse(
            "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.splitlines())
        ).body
    ]


def names(statement: ast.stmt) -> tuple[set[str], set[str], set[str]]:
    """What a top-level statement binds in the notebook's namespace, the names it reads from there
    when it runs, and the names that the functions and lambdas it defines read when called."""
    bound: set[str] = set()
    now: set[str] = set()
    later: set[str] = set()

    def walk(table: symtable.SymbolTable, top: bool, deferred: bool) -> None:
        for symbol in table.get_symbols():
            if top and (symbol.is_assigned() or symbol.is_imported()):
                bound.add(symbol.get_name())
            elif symbol.is_referenced() and (top or symbol.is_global()):
                (later if deferred else now).add(symbol.get_name())
        for child in table.get_children():
            runs_at_once = child.get_type() == "class" or child.get_name() in COMPREHENSIONS
            walk(child, False, deferred or not runs_at_once)

    walk(symtable.symtable(ast.unparse(statement), "<cell>", "exec"), True, False)
    return bound, now, later


def lacking(cells: list[str], available: set[str]) -> list[str]:
    """The names the cells read before anything bound them, in order (deferred reads: at all)."""
    known = set(available)
    missing: set[str] = set()
    deferred: set[str] = set()
    for statement in statements(cells):
        bound, now, later = names(statement)
        missing |= now - bound - known
        known |= bound
        deferred |= later
    return sorted(missing | (deferred - known))


def missing_names(notebook: Path) -> dict[str, list[str]]:
    setup, found = sections(notebook)
    builtin = set(dir(builtins)) | IPYTHON
    available = builtin.union(*(names(s)[0] for s in statements(setup)))
    missing = {"set-up": lacking(setup, builtin)}
    missing |= {title: lacking(cells, available) for title, cells in found.items()}
    return {title: names for title, names in missing.items() if names}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_every_section_runs_from_the_set_up_cell_and_its_own_cells(notebook):
    missing = missing_names(notebook)
    assert not missing, (
        f"{notebook.name}: these sections read names that only earlier sections define (or define "
        f"them too late), so they fail after a kernel restart: {missing}. Define them in the section "
        "(a trained model: a cell tagged `restore` that calls fit(...) again, which replays its run) "
        "or import them in the set-up cell."
    )


def test_the_check_finds_a_section_that_leans_on_an_earlier_one(tmp_path):
    cells = [
        ("markdown", "# 99 · title"),
        ("code", "import torch\nx = torch.ones(2)"),
        ("markdown", "## One"),
        ("code", "y = x + 1\ndef f():\n    return y"),
        ("markdown", "## Two"),
        ("code", "z = y * 2\nclass C:\n    def m(self):\n        return w"),
        ("markdown", "## Three"),  # order: v is read before the section binds it, u after
        ("code", "print(v)\nv = 1\ndef g():\n    return u + h(v)\nh = abs\nu = 2\ng()"),
        ("code", "%time [q * 2 for q in range(3)] + [k for _ in range(2)]\n[k for _ in range(2)]"),
        ("code", "class D(torch.nn.Module):\n    size = n\nn = 3"),  # a class body runs at once
        ("markdown", "## Four"),
        ("code", 'if "y" not in globals():  # a restore cell\n    y = x + 1\ny'),
        ("markdown", "## Summary"),
        ("code", "print(x, y, z)"),
    ]
    new = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    path = tmp_path / "99_toy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[new[t](s) for t, s in cells]), path)
    assert missing_names(path) == {"## Two": ["w", "y"], "## Three": ["k", "n", "v"]}

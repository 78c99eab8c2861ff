"""Every section of every lecture notebook stands alone after a kernel restart: the set-up cells and
its own cells (a ``restore`` cell first where it needs an earlier training) bind every name it reads.
Checked statically; the closing sections are exempt. `tools/warm.py --sections` runs them instead."""

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


def statements(cells) -> list[ast.stmt]:
    """The top-level statements of the code cells, in order (IPython magics and shell lines left out)."""
    return [
        node
        for cell in cells
        for node in ast.parse(
            "\n".join(
                "" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()
            )
        ).body
    ]


def names(statement: ast.stmt) -> tuple[set[str], set[str], set[str]]:
    """What a top-level statement binds, the names it reads when it runs (class bodies and
    comprehensions run at once), and the names its functions and lambdas read when called."""
    bound, now, later = set(), set(), set()

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


def lacking(cells, available: set[str]) -> list[str]:
    """The names the cells read before anything bound them (deferred reads: at all)."""
    known, missing, deferred = set(available), set(), set()
    for statement in statements(cells):
        bound, now, later = names(statement)
        missing |= now - bound - known
        known |= bound
        deferred |= later
    return sorted(missing | (deferred - known))


def missing_names(nb: nbformat.NotebookNode) -> dict[str, list[str]]:
    setup, found = warm.split_sections(nb)
    builtin = set(dir(builtins)) | IPYTHON
    available = builtin.union(*(names(s)[0] for s in statements(setup)))
    missing = {"set-up": lacking(setup, builtin)}
    missing |= {title: lacking(cells, available) for title, cells in found.items()}
    return {title: names for title, names in missing.items() if names}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_every_section_runs_from_the_set_up_cell_and_its_own_cells(notebook):
    missing = missing_names(nbformat.read(notebook, as_version=4))
    assert not missing, (
        f"{notebook.name}: these sections read names that only earlier sections define (or define "
        f"them too late), so they fail after a kernel restart: {missing}. Define them in the section "
        "(a trained model: a cell tagged `restore` that calls fit(...) again, which replays its run) "
        "or import them in the set-up cell."
    )


def test_the_check_finds_a_section_that_leans_on_an_earlier_one():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [
        md("# 99 · title"),
        code("import torch\nx = torch.ones(2)"),
        md("## One"),
        code("y = x + 1\ndef f():\n    return y"),
        md("## Two"),
        code("z = y * 2\nclass C:\n    def m(self):\n        return w"),
        md("## Three"),  # order: v is read before the section binds it, u after
        code("print(v)\nv = 1\ndef g():\n    return u + h(v)\nh = abs\nu = 2\ng()"),
        code("%time [q * 2 for q in range(3)] + [k for _ in range(2)]\n[k for _ in range(2)]"),
        code("class D(torch.nn.Module):\n    size = n\nn = 3"),  # a class body runs at once
        md("## Four"),
        code('if "y" not in globals():  # a restore cell\n    y = x + 1\ny'),
        md("## Summary"),
        code("print(x, y, z)"),
    ]
    missing = missing_names(nbformat.v4.new_notebook(cells=cells))
    assert missing == {"## Two": ["w", "y"], "## Three": ["k", "n", "v"]}

"""A student's check in a real JupyterLab: a wrong answer fails with its hint, the right one passes.

JupyterLab is started in the repository root the way tests/test_lab_e2e.py starts it (its
`start_lab`, on loopback with a token, autosave off, the ``ci`` preset), and headless Chromium opens
``exercises/00_fashion_mnist.ipynb``, whose kernel starts in ``exercises/`` and finds its checks in
``exercises/tests/00_fashion_mnist/``. The test runs the set-up cells, types a wrong answer into
exercise 2's answer cell and runs its ``grader.check("ex2")`` cell: the page must say that the check
failed and show the check's hint. Then it types the right answer: the page must say that ex2
passed. Screenshots of the two verdicts go to ``build/e2e/exercises-check-failed.png`` and
``build/e2e/exercises-check.png``.

The edited notebook must stay unsaved (autosave is off): the file on disk is checked unchanged
while the page holds the edits. The test removes the ``.OTTER_LOG`` that otter's checks write.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_lab_e2e as e2e
from playwright.sync_api import Browser, Locator, Page
from test_lab_e2e import browser

__all__ = ["browser"]  # the Chromium fixture of tests/test_lab_e2e.py, used here too

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "exercises" / "00_fashion_mnist.ipynb"
TESTS = REPO / "exercises" / "tests" / NOTEBOOK.stem
QUESTION = "ex2"
# A cell's run: the set-up cell, which imports torch and loads Fashion-MNIST, took up to 25 s on a
# 2-core machine busy with other work, a check a second; ten times the set-up's, scaled like every
# timeout of test_lab_e2e.py.
CELL_RUN = e2e.SCALE * 300

WRONG = """\
from pathlib import Path

empty = Path("/no/such/folder")
error = ValueError("not the error FashionMNIST raises")
"""
RIGHT = """\
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as folder:
    try:
        FashionMNIST(root=folder)
    except d2l_ext.DataError as e:
        error = e
empty = Path(folder)
"""


def layout() -> tuple[list[int], int, int]:
    """Indices (among all cells) of the set-up code cells, of ex2's answer cell and of its check."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    first_exercise = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("## Exercise 1"))
    heading = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("## Exercise 2\n"))
    check = next(i for i in code if "".join(cells[i]["source"]) == f'grader.check("{QUESTION}")')
    answer = next(
        i for i in code if heading < i < check and "otter_answer_cell" in cells[i]["metadata"].get("tags", [])
    )
    return [i for i in code if i < first_exercise], answer, check


def hint() -> str:
    """The failure message of ex2's check, read from the test file the student gets."""
    tree = ast.parse((TESTS / f"{QUESTION}.py").read_text())
    (deco,) = next(node for node in tree.body if isinstance(node, ast.FunctionDef)).decorator_list
    return next(k.value.value for k in deco.keywords if k.arg == "failure_message")


PROMPT = "(c) => c.querySelector('.jp-InputArea .jp-InputPrompt').innerText.trim()"
# The cell ran again: its execution count changed, and the kernel is idle.
RAN = f"""([c, before]) => {{ const p = ({PROMPT})(c);
  return p !== before && /^\\[\\d+\\]:$/.test(p) && {e2e.KERNEL_IDLE}; }}"""


def run_cell(page: Page, cell: Locator) -> str:
    """Select ``cell`` in command mode, run it (Shift+Enter), wait for its new execution count and
    an idle kernel; return the text of its output."""
    before = cell.evaluate(PROMPT)
    cell.locator(".jp-InputArea .jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(RAN, arg=[cell.element_handle(), before], timeout=CELL_RUN * 1000, polling=250)
    return cell.locator(".jp-OutputArea").inner_text()


def screenshot(page: Page, cell: Locator, name: str) -> None:
    cell.scroll_into_view_if_needed()
    e2e.SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=e2e.SHOTS / f"{name}.png")


def type_answer(page: Page, cell: Locator, code: str) -> None:
    """Replace the source of the code ``cell`` with ``code``, as typed (no auto-indent, no brackets)."""
    cell.locator(".cm-content").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.insert_text(code)
    page.keyboard.press("Escape")  # back to command mode
    shown = cell.locator(".cm-content").inner_text()
    assert shown.split() == code.split(), f"the answer cell shows:\n{shown}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[e2e.Lab]:
    with e2e.start_lab(tmp_path_factory.mktemp("lab"), notebooks=".") as server:  # the repository root
        yield server


def test_a_wrong_answer_fails_with_its_hint_and_the_right_one_passes(lab: e2e.Lab, browser: Browser):
    setup, answer, check = layout()
    digest = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    log = NOTEBOOK.parent / ".OTTER_LOG"
    had_log = log.exists()
    nb_cells = json.loads(NOTEBOOK.read_text())["cells"]
    try:
        with e2e.open_page(browser, lab, f"exercises/{NOTEBOOK.name}") as page:
            page.wait_for_function(
                e2e.RUN_FINISHED,
                arg=sum(c["cell_type"] == "code" for c in nb_cells),
                timeout=e2e.PAGE_LOAD * 1000,
            )  # kernel ready
            cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
            assert cells.count() == len(nb_cells)
            for i in setup:  # otter's init cell (grader = otter.Notebook(...)) and the set-up cell
                out = run_cell(page, cells.nth(i))
                assert "Traceback" not in out and "Error" not in out, out
            type_answer(page, cells.nth(answer), WRONG)
            assert "Traceback" not in run_cell(page, cells.nth(answer))
            verdict = run_cell(page, cells.nth(check))
            assert f"{QUESTION} results" in verdict and "Test case failed" in verdict, verdict
            assert hint() in verdict, f"the failing check does not show its hint:\n{verdict}"
            assert "passed!" not in verdict, verdict
            screenshot(page, cells.nth(check), "exercises-check-failed")
            type_answer(page, cells.nth(answer), RIGHT)
            assert "Traceback" not in run_cell(page, cells.nth(answer))
            verdict = run_cell(page, cells.nth(check))
            assert re.search(rf"\b{QUESTION} passed!", verdict), verdict
            screenshot(page, cells.nth(check), "exercises-check")
            # The page holds the edits, unsaved ...
            tab = page.locator(".lm-TabBar-tab", has_text=NOTEBOOK.name)
            assert "jp-mod-dirty" in (tab.get_attribute("class") or ""), "the edits should be unsaved"
    finally:
        with contextlib.suppress(OSError):
            for k in lab.api("GET", "/api/kernels"):
                lab.api("DELETE", f"/api/kernels/{k['id']}")
        if not had_log:
            log.unlink(missing_ok=True)
    # ... and the file on disk is as it was.
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == digest, "JupyterLab saved the notebook"

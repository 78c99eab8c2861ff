"""The section that leans hardest on earlier ones runs alone, as after a kernel restart mid-lecture:
section 6 of notebook 01 reads the BN-LeNet of section 3 and the ghost-batch runs of section 4, which
its `restore` cell replays. It runs in a fresh kernel after the set-up cells (`tools/warm.py`'s
runner) against the test session's run cache (run alone: the runs train first, in the ci preset)."""

import os
from pathlib import Path

import nbformat
from repo_scripts import script

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_batch_norm.ipynb"
SECTION = "## 6. Small batches are noisy"

warm = script("tools/warm.py")


def test_a_section_that_needs_earlier_trainings_runs_alone_after_the_set_up_cells(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's d2l_ext
    monkeypatch.setenv("D2L_EXT_PRESET", "ci")
    monkeypatch.delenv("D2L_EXT_RETRAIN", raising=False)
    if "D2L_EXT_RUNS" not in os.environ:  # run alone: a cache of the test's own, never ~/.cache
        monkeypatch.setenv("D2L_EXT_RUNS", str(REPO / "build" / "test-runs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup, sections = warm.split_sections(nb)
    cells = sections[SECTION]
    assert "restore" in cells[0].metadata.get("tags", []), "the section no longer opens with its restore cell"
    alone = nbformat.v4.new_notebook(metadata=nb.metadata, cells=setup + cells)
    warm.execute(alone, NOTEBOOK, timeout=600)  # raises CellExecutionError, naming the cell, if one fails
    assert all(cell.execution_count for cell in alone.cells)  # every cell ran, in a fresh kernel
    assert not [out for cell in alone.cells for out in cell.get("outputs", []) if out.output_type == "error"]

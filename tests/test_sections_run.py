"""`tools/warm.py --sections` on a real notebook: after a warm-up, every section of notebook 00 runs
on its own in a fresh kernel after the set-up cells, as after a kernel restart in the lecture. The
static check of every notebook is tests/test_sections.py; this one executes (about a minute, so it
belongs to the notebook tier: tests/conftest.py)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_fashion_mnist.ipynb"


def test_every_section_of_notebook_00_runs_alone_after_the_set_up_cells(tmp_path, monkeypatch, capsys):
    import nbformat

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import warm
    finally:
        sys.path.remove(str(REPO / "tools"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernels import this checkout's d2l_ext
    monkeypatch.setenv("D2L_EXT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("D2L_EXT_PRESET", "ci")
    assert warm.main([str(NOTEBOOK), "--sections", "--preset", "ci", "--timeout", "600"]) == 0
    out = capsys.readouterr().out
    _, sections = warm.split_sections(nbformat.read(NOTEBOOK, as_version=4))
    assert len(sections) >= 5 and "## Summary" not in sections
    for title in sections:
        assert title[3:] in out, f"{title} did not run alone"
    assert "Every section runs on its own." in out

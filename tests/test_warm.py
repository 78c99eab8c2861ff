"""tools/warm.py: a bad argument or environment is refused in one line that says what to do, before
any notebook runs (its runs themselves are tested in test_runs.py); with --memory, the kernel's peak."""

import nbformat
import pytest
from repo_scripts import script

warm = script("tools/warm.py")


@pytest.fixture
def notebook(tmp_path, monkeypatch):
    """A real, tiny notebook that these tests never get to run."""
    monkeypatch.delenv("D2L_EXT_PRESET", raising=False)
    monkeypatch.delenv("D2L_EXT_RUNS", raising=False)
    path = tmp_path / "01_toy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), path)
    return path


def refusal(capsys) -> str:
    """What warm printed: nothing on stdout (nothing ran), one line on stderr (no traceback)."""
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_missing_notebook_is_named_before_any_notebook_runs(notebook, capsys):
    # It used to run the notebooks before it, then end in nbformat's FileNotFoundError traceback.
    missing = notebook.parent / "02_resnt.ipynb"
    assert warm.main([str(notebook), str(missing)]) == 2
    err = refusal(capsys)
    assert f"{missing}: No such file or directory" in err and "pass the path of a notebook" in err


@pytest.mark.parametrize("name, text", [("notes.ipynb", "# notes\n"), ("settings.json", '{"lr": 0.1}')])
def test_a_file_that_is_not_a_notebook_is_named(notebook, capsys, name, text):
    # It used to end in nbformat's NotJSONError or jsonschema's ValidationError traceback.
    other = notebook.parent / name
    other.write_text(text)
    assert warm.main([str(other)]) == 2
    err = refusal(capsys)
    assert f"{other}: not a notebook (" in err and "pass the path of a notebook" in err


def test_an_unknown_preset_in_the_environment_says_what_to_set(notebook, capsys, monkeypatch):
    # It used to end in current_preset()'s ValueError traceback.
    monkeypatch.setenv("D2L_EXT_PRESET", "fast")
    assert warm.main([str(notebook)]) == 2
    assert "D2L_EXT_PRESET='fast' is not a preset; use one of ci, demo, full" in refusal(capsys)


def test_memory_is_the_kernels_peak_and_a_notebook_over_the_limit_fails(tmp_path, monkeypatch, capsys):
    # One runner for warming and for memory (`make memory`): a kernel that holds 300 MB at its peak.
    monkeypatch.setenv("D2L_EXT_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "01_big.ipynb"
    cells = ["import numpy as np\nx = np.ones(300_000_000 // 8)", "del x"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    memory = {}
    warm.execute(nbformat.read(path, as_version=4), path, timeout=60, memory=memory)
    assert memory["peak"] >= 300e6 + 20e6  # the array and a Python interpreter at least
    assert memory["binder"] == memory["peak"] - memory["cuda_libs"] and memory["cuda_libs"] >= 0
    assert warm.main([str(path), "--memory", "--limit-mb", str(memory["peak"] / 1e6 + 1000)]) == 0
    assert warm.main([str(path), "--memory", "--limit-mb", "300"]) == 1
    assert "Over 300 MB (Binder estimate): 01_big.ipynb" in capsys.readouterr().err

"""tools/warm.py: bad input is refused in one line that says what to do, before any notebook runs
(its runs themselves: test_runs.py); with --memory, the kernel's peak."""

import asyncio
from queue import Empty

import nbformat
import pytest
from repo_scripts import script

warm = script("tools/warm.py")


@pytest.mark.parametrize(
    "name, text, said",
    [
        (
            "02_resnt.ipynb",
            None,
            ["02_resnt.ipynb: No such file or directory", "pass the path of a notebook"],
        ),
        ("notes.ipynb", "# notes\n", ["notes.ipynb: not a notebook (", "pass the path of a notebook"]),
        ("settings.json", '{"lr": 0.1}', ["settings.json: not a notebook (", "pass the path of a notebook"]),
        ("preset", None, ["D2L_EXT_PRESET='fast' is not a preset; use one of ci, demo, full"]),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_notebook_runs(
    tmp_path, monkeypatch, capsys, name, text, said
):
    # Each used to end in a traceback (nbformat's, jsonschema's or current_preset()'s), a missing
    # notebook only after the notebooks before it had run.
    monkeypatch.delenv("D2L_EXT_RUNS", raising=False)
    monkeypatch.setenv("D2L_EXT_PRESET", "fast" if name == "preset" else "ci")
    good = tmp_path / "01_toy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), good)
    if text is not None:
        (tmp_path / name).write_text(text)
    assert warm.main([str(good)] + ([] if name == "preset" else [str(tmp_path / name)])) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert all(part in err for part in said), err


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


class Channel:
    """A channel whose message is there, but whose first ``misses`` waits do not see it."""

    def __init__(self, misses: int):
        self.misses, self.waits = misses, []

    async def get_msg(self, timeout=None):
        self.waits.append(timeout)
        if len(self.waits) <= self.misses:
            await asyncio.sleep(timeout)
            raise Empty
        return {"msg_type": "execute_reply"}


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_reply_one_wait_missed_is_found_by_the_next_look(timeout):
    channel = Channel(misses=2)
    warm.poll_in_slices(channel, every=0.01)
    assert asyncio.run(channel.get_msg(timeout=timeout)) == {"msg_type": "execute_reply"}
    assert channel.waits == [0.01, 0.01, 0.01]


def test_a_reply_that_never_comes_still_times_out():
    channel = Channel(misses=10**6)
    warm.poll_in_slices(channel, every=0.01)
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.05))
    assert max(channel.waits) <= 0.01  # in slices, never one long wait

"""Train every run of the lecture notebooks ahead of the lecture: ``make warm``.

Executes each notebook top to bottom in a fresh kernel under a preset (default: the one in force,
``$D2L_EXT_PRESET``, else demo on a CPU), as the lecture will, so that every training stores its run
in the run cache (d2l_ext/runs.py) under exactly the key the lecture will ask for. Run in the
lecture, the notebooks then replay those runs instead of training. Nothing is written back to the
notebooks. A second ``make warm`` replays everything and shows how long each notebook then takes.

    python tools/warm.py                  # every lecture notebook, the preset in force
    python tools/warm.py --preset full    # e.g. on a GPU machine, the book's settings
    python tools/warm.py notebooks/02_resnet.ipynb --retrain
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from d2l_ext.presets import PRESETS, current_preset  # noqa: E402
from d2l_ext.runs import runs_dir  # noqa: E402


def replays(nb) -> int:
    """How many cells' outputs say a run was replayed (one line per replayed run)."""
    return sum(
        out.get("text", "").count("Replayed from the run cache")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def warm(notebook: Path, timeout: int) -> tuple[float, int]:
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start, replays(nb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--preset", choices=PRESETS, help="default: $D2L_EXT_PRESET, else demo without a GPU")
    parser.add_argument("--retrain", action="store_true", help="train every run again and store it anew")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (a hang guard)")
    args = parser.parse_args(argv)
    if args.preset:
        os.environ["D2L_EXT_PRESET"] = args.preset
    if args.retrain:
        os.environ["D2L_EXT_RETRAIN"] = "1"
    preset, folder = current_preset(), runs_dir()
    if folder is None:
        print("D2L_EXT_RUNS=off: there is no run cache to warm; unset it first.", file=sys.stderr)
        return 2
    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"Warming the run cache {folder} for the {preset!r} preset ({len(notebooks)} notebooks).")
    total = 0.0
    for notebook in notebooks:
        try:
            seconds, replayed = warm(notebook, args.timeout)
        except CellExecutionError as e:
            print(f"{notebook.name}: a cell failed, so its later runs are not stored:\n{e}", file=sys.stderr)
            return 1
        total += seconds
        print(f"  {notebook.name:24s} {seconds:6.1f} s   runs replayed from the cache: {replayed}")
    print(f"Done in {total:.0f} s. In the lecture, with D2L_EXT_PRESET={preset}, these runs replay.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run the lecture notebooks, each top to bottom in a fresh kernel: ``make warm``, ``make memory``.

Each training stores its run in the run cache (d2l_ext/runs.py), so that the lecture replays it.
``--sections`` then runs each ``##`` section alone after the set-up cells, as after a restart
mid-lecture. ``--memory`` measures each kernel's peak resident memory and the Binder estimate (less
PyTorch's CUDA libraries: Binder installs the CPU-only build), failing above ``--limit-mb``.
``--record`` writes what it measured as JSON (as in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from queue import Empty

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from d2l_ext.presets import PRESETS, current_preset  # noqa: E402
from d2l_ext.runs import machine_name, runs_dir  # noqa: E402

MB = 1e6
# Shared libraries of PyTorch's CUDA build, which Binder's CPU-only build does not have.
CUDA_LIBS = re.compile(r"/(nvidia|triton)/|lib(torch_cuda|cu\w+|nv\w+|nccl\w*)\.so", re.I)
# The closing sections gather every section's numbers; they are not meant to run alone.
CLOSING = re.compile(r"^## (Summary|This run's numbers|What this run measured)\b")


def cuda_library_rss(pid: int) -> int:
    """Resident bytes of CUDA libraries mapped into a live process (from /proc/<pid>/smaps)."""
    total, is_cuda = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            is_cuda = len(fields) > 5 and bool(CUDA_LIBS.search(fields[5]))
        elif is_cuda and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def poll_in_slices(channel, every: float = 1.0) -> None:
    """Make ``channel.get_msg`` look for a message every ``every`` seconds until its timeout, instead
    of in one wait. After a widget cell, nbclient's one wait for the cell's reply has missed it here
    (kernel idle, client waiting until the cell timeout; nbclient issue #312, open); a new look
    finds a message that is already there."""
    get_msg = channel.get_msg

    async def sliced(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = every if deadline is None else min(every, max(0.0, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = sliced


def execute(nb, notebook: Path, timeout: int, memory: dict | None = None) -> float:
    """Run ``nb`` in a fresh kernel started in ``notebook``'s folder; the seconds it took. With a
    ``memory`` dict, fill in the kernel's ``peak`` (its ``VmHWM``, or the sampled RSS of it and its
    children such as data-loader workers, if higher), its ``cuda_libs`` and the ``binder`` estimate."""
    path = {"metadata": {"path": str(notebook.parent)}}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=path)
    done, sampled = threading.Event(), [0]

    def sample(kernel: psutil.Process) -> None:
        while not done.wait(0.1):
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [kernel, *kernel.children(recursive=True)]
                sampled[0] = max(sampled[0], sum(p.memory_info().rss for p in tree))

    def measure(**_) -> None:  # at the start and after each cell, while the kernel lives
        pid = client.km.provisioner.pid
        status = Path(f"/proc/{pid}/status").read_text()
        peak = max(int(re.search(r"^VmHWM:\s+(\d+)", status, re.M)[1]) * 1024, sampled[0])
        if peak > memory.get("peak", -1):  # smaps is slow to read: only when the peak grows
            memory.update(peak=peak, cuda_libs=cuda_library_rss(pid))
            memory["binder"] = peak - memory["cuda_libs"]

    def start(**_) -> None:
        poll_in_slices(client.kc.shell_channel)
        poll_in_slices(client.kc.iopub_channel)
        if memory is not None:
            kernel = psutil.Process(client.km.provisioner.pid)
            threading.Thread(target=sample, args=(kernel,), daemon=True).start()
            measure()

    client.on_notebook_start = start
    if memory is not None:
        client.on_cell_executed = measure
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        done.set()
    return time.perf_counter() - start


def read(path: Path):
    """The notebook at ``path``, or a ValueError in one line that says what to pass instead."""
    try:
        return nbformat.read(path, as_version=4)
    # nbformat raises OSError for a file it cannot open, ValueError for bytes that are not JSON,
    # AttributeError for JSON that is not an object, ValidationError for an object not a notebook.
    except (OSError, ValueError, AttributeError, nbformat.ValidationError) as e:
        why = (e.strerror or e) if isinstance(e, OSError) else f"not a notebook ({str(e).splitlines()[0]})"
        raise ValueError(
            f"{path}: {why}; pass the path of a notebook, e.g. notebooks/02_resnet.ipynb, or none "
            "to warm every notebook in notebooks/."
        ) from None


def replays(nb) -> int:
    """How many outputs say a run or a measurement was replayed (one line for each)."""
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    return sum(out.get("text", "").count("Replayed from the run cache") for out in outputs)


def split_sections(nb) -> tuple[list, dict[str, list]]:
    """The set-up cells (the code cells before the first ``##`` heading) and, per ``##`` section
    that is not a closing one, its code cells."""
    setup, parts, title = [], {}, None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            title = cell.source.splitlines()[0]
            parts[title] = []
        elif cell.cell_type == "code":
            (setup if title is None else parts[title]).append(cell)
    return setup, {t: cells for t, cells in parts.items() if cells and not CLOSING.match(t)}


def run_sections(notebook: Path, timeout: int, record: dict) -> bool:
    """Run each section of ``notebook`` alone after the set-up cells and print its seconds; False,
    naming the section, at the first that fails."""
    nb = read(notebook)
    setup, parts = split_sections(nb)
    print(f"  {notebook.name}")
    for title, cells in parts.items():
        alone = nbformat.v4.new_notebook(metadata=nb.metadata, cells=copy.deepcopy(setup + cells))
        try:
            seconds = execute(alone, notebook, timeout)
        except CellExecutionError as e:
            print(
                f"{notebook.name}, section {title!r}: it fails in a fresh kernel after the set-up cells "
                f"(what does it use that only an earlier section makes?)\n{e}",
                file=sys.stderr,
            )
            return False
        record.setdefault(notebook.name, {})[title[3:]] = round(seconds, 1)
        print(f"    {seconds:6.1f} s  {title[3:]:62.62s}  replays: {replays(alone)}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--preset", choices=PRESETS, help="default: $D2L_EXT_PRESET, else demo without a GPU")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (a hang guard)")
    parser.add_argument("--sections", action="store_true", help="then each section alone, after the set-up")
    parser.add_argument("--memory", action="store_true", help="also measure each kernel's peak memory")
    parser.add_argument("--limit-mb", type=float, default=1500, help="--memory fails above this (1500)")
    parser.add_argument("--record", type=Path, help="write the seconds, replays and memory to this JSON file")
    args = parser.parse_args(argv)
    if args.preset:
        os.environ["D2L_EXT_PRESET"] = args.preset
    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    try:  # a bad $D2L_EXT_PRESET or notebook is refused in one line before anything runs
        preset, nbs = current_preset(), [read(notebook) for notebook in notebooks]
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if runs_dir() is None:
        print("D2L_EXT_RUNS=off: there is no run cache to warm; unset it first.", file=sys.stderr)
        return 2
    print(f"Warming the run cache {runs_dir()} for the {preset!r} preset ({len(notebooks)} notebooks).")
    record = {
        "preset": preset,
        "machine": machine_name(),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "notebooks": {},
        "sections": {},
    }
    over = []
    for notebook, nb in zip(notebooks, nbs):
        memory = {} if args.memory else None
        try:
            seconds = execute(nb, notebook, args.timeout, memory)
        except CellExecutionError as e:
            print(f"{notebook.name}: a cell failed, so its later runs are not stored:\n{e}", file=sys.stderr)
            return 1
        record["notebooks"][notebook.name] = {"seconds": round(seconds, 1), "replayed": replays(nb)}
        line = f"  {notebook.name:24s} {seconds:6.1f} s   replayed (runs, measurements): {replays(nb)}"
        if memory is not None:
            record["notebooks"][notebook.name]["memory"] = memory
            line += f"   peak {memory['peak'] / MB:,.0f} MB, Binder estimate {memory['binder'] / MB:,.0f} MB"
            over += [notebook.name] if memory["binder"] > args.limit_mb * MB else []
        print(line)
    total = sum(n["seconds"] for n in record["notebooks"].values())
    print(f"Done in {total:.0f} s. In the lecture, with D2L_EXT_PRESET={preset}, these runs replay.")
    if args.sections:
        os.environ.pop("D2L_EXT_RETRAIN", None)  # the runs are stored now: the sections replay them
        print(
            "Each section alone, in a fresh kernel after the set-up cells (seconds, kernel start included):"
        )
        if not all(run_sections(notebook, args.timeout, record["sections"]) for notebook in notebooks):
            return 1
        print("Every section runs on its own.")
    if args.record:
        record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"Recorded in {args.record}")
    if over:
        print(f"Over {args.limit_mb:,.0f} MB (Binder estimate): {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

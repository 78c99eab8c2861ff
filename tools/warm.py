"""Train every run of the lecture notebooks ahead of the lecture: ``make warm``.

Executes each notebook top to bottom in a fresh kernel under a preset (default: the one in force,
``$D2L_EXT_PRESET``, else demo on a CPU), as the lecture will, so that every training stores its run
in the run cache (d2l_ext/runs.py) under exactly the key the lecture will ask for. Run in the
lecture, the notebooks then replay those runs instead of training. Nothing is written back to the
notebooks. A second ``make warm`` replays everything and shows how long each notebook then takes.

With ``--sections`` it then checks that every section stands alone, as after a kernel restart in
the middle of the lecture: each ``##`` section runs in a fresh kernel of its own, after the
notebook's set-up cells (the code cells before the first ``##`` heading), with the warm cache. The
closing sections, which collect every section's numbers, are left out. It prints the seconds each
section takes, and exits 1 naming the first section that fails and its error.

    python tools/warm.py                  # every lecture notebook, the preset in force
    python tools/warm.py --preset full    # e.g. on a GPU machine, the book's settings
    python tools/warm.py notebooks/02_resnet.ipynb --retrain
    python tools/warm.py --sections       # then every section on its own, in a fresh kernel
    python tools/warm.py --record build/warm.json   # also write the times, machine and date as JSON
    python tools/warm.py --memory --preset demo      # also each kernel's peak memory (make memory)

The site's table of lecture times comes from such records, committed in benchmarks/results/.

With ``--memory`` it also measures each notebook's kernel: its peak resident memory (Linux's
high-water mark ``VmHWM``, or the sampled RSS of the kernel and its children if that is higher), and
the Binder estimate, that peak less the resident pages of PyTorch's CUDA libraries (Binder installs
the CPU-only build). mybinder.org gives a session 1-2 GB for everything, so it exits 1 when a
kernel's estimate goes over ``--limit-mb`` (default 1,500 MB; MB = 10^6 bytes).
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
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from d2l_ext.presets import PRESETS, current_preset  # noqa: E402
from d2l_ext.runs import machine_name, runs_dir  # noqa: E402


def replays(nb) -> int:
    """How many cells' outputs say a run or a measurement was replayed (one line for each)."""
    return sum(
        out.get("text", "").count("Replayed from the run cache")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


MB = 1e6
# Shared libraries of PyTorch's CUDA build. Binder installs the CPU-only build, which has none of
# them, so their resident pages are subtracted for the Binder estimate.
CUDA_LIBS = re.compile(r"/(nvidia|triton)/|lib(torch_cuda|cu\w+|nv\w+|nccl\w*)\.so", re.I)


def high_water_mark(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (Linux's ``VmHWM``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1)) * 1024


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


def tree_rss(process: psutil.Process) -> int:
    """Summed RSS of a process and its descendants (e.g. data-loader workers)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def execute(nb, notebook: Path, timeout: int, memory: dict | None = None) -> float:
    """Run ``nb`` in a fresh kernel started in ``notebook``'s folder; the seconds it took. With a
    ``memory`` dict, fill in the kernel's ``peak`` and ``cuda_libs`` bytes and the ``binder`` estimate."""
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    start = time.perf_counter()
    if memory is None:
        client.execute()
        return time.perf_counter() - start
    with client.setup_kernel():
        kernel, done, peak = psutil.Process(client.km.provisioner.pid), threading.Event(), [0]

        def sample() -> None:
            while not done.wait(0.1):
                with contextlib.suppress(psutil.NoSuchProcess):
                    peak[0] = max(peak[0], tree_rss(kernel))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        finally:
            memory.update(
                peak=max(high_water_mark(kernel.pid), peak[0]), cuda_libs=cuda_library_rss(kernel.pid)
            )
            memory["binder"] = memory["peak"] - memory["cuda_libs"]
            done.set()
            sampler.join()
    return time.perf_counter() - start


def check_notebook(path: Path) -> None:
    """Raise a ValueError, one line that says what to pass instead, unless ``path`` reads as a notebook."""
    try:
        nbformat.read(path, as_version=4)
    # nbformat raises OSError for a file it cannot open, ValueError for bytes that are not JSON (or
    # an unknown format version), AttributeError for JSON that is not an object, and
    # ValidationError for an object that is not a notebook.
    except (OSError, ValueError, AttributeError, nbformat.ValidationError) as e:
        why = (e.strerror or e) if isinstance(e, OSError) else f"not a notebook ({str(e).splitlines()[0]})"
        raise ValueError(
            f"{path}: {why}; pass the path of a notebook, e.g. notebooks/02_resnet.ipynb, or none "
            "to warm every notebook in notebooks/."
        ) from None


def warm(notebook: Path, timeout: int, memory: dict | None = None) -> tuple[float, int]:
    nb = nbformat.read(notebook, as_version=4)
    return execute(nb, notebook, timeout, memory), replays(nb)


# The closing sections gather every section's numbers; they are not meant to run alone.
CLOSING = re.compile(r"^## (Summary|This run's numbers|What this run measured)\b")


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


def run_sections(notebook: Path, timeout: int) -> Iterator[tuple[str, float, int]]:
    """Run each section of ``notebook`` in a fresh kernel after the set-up cells; yield, as each
    ends, its title, seconds (kernel start and set-up included) and replayed runs. A failure raises
    CellExecutionError, its message naming the section."""
    nb = nbformat.read(notebook, as_version=4)
    setup, parts = split_sections(nb)
    for title, cells in parts.items():
        alone = nbformat.v4.new_notebook(metadata=nb.metadata, cells=copy.deepcopy(setup + cells))
        try:
            seconds = execute(alone, notebook, timeout)
        except CellExecutionError as e:
            raise CellExecutionError(
                f"{notebook.name}, section {title!r}: it fails in a fresh kernel after the set-up cells "
                f"(what does it use that only an earlier section makes?)\n{e}",
                e.ename,
                e.evalue,
            ) from None
        yield title, seconds, replays(alone)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--preset", choices=PRESETS, help="default: $D2L_EXT_PRESET, else demo without a GPU")
    parser.add_argument("--retrain", action="store_true", help="train every run again and store it anew")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (a hang guard)")
    parser.add_argument(
        "--sections", action="store_true", help="then run each section alone, after the set-up cells"
    )
    parser.add_argument("--memory", action="store_true", help="also measure each kernel's peak memory")
    parser.add_argument("--limit-mb", type=float, default=1500, help="--memory fails above this (1500)")
    parser.add_argument(
        "--record",
        type=Path,
        help="write the seconds and replays, with machine and date, to this JSON file",
    )
    args = parser.parse_args(argv)
    if args.preset:
        os.environ["D2L_EXT_PRESET"] = args.preset
    if args.retrain:
        os.environ["D2L_EXT_RETRAIN"] = "1"
    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    # A bad $D2L_EXT_PRESET or notebook is refused in one line before anything runs, not in a
    # traceback after the notebooks before it have run.
    try:
        preset = current_preset()
        for notebook in notebooks:
            check_notebook(notebook)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    folder = runs_dir()
    if folder is None:
        print("D2L_EXT_RUNS=off: there is no run cache to warm; unset it first.", file=sys.stderr)
        return 2
    print(f"Warming the run cache {folder} for the {preset!r} preset ({len(notebooks)} notebooks).")
    record = {
        "preset": preset,
        "machine": machine_name(),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "notebooks": {},
        "sections": {},
    }
    total, over = 0.0, []
    for notebook in notebooks:
        memory = {} if args.memory else None
        try:
            seconds, replayed = warm(notebook, args.timeout, memory)
        except CellExecutionError as e:
            print(f"{notebook.name}: a cell failed, so its later runs are not stored:\n{e}", file=sys.stderr)
            return 1
        total += seconds
        record["notebooks"][notebook.name] = {"seconds": round(seconds, 1), "replayed": replayed}
        line = f"  {notebook.name:24s} {seconds:6.1f} s   replayed (runs, measurements): {replayed}"
        if memory is not None:
            record["notebooks"][notebook.name]["memory"] = memory
            line += f"   peak {memory['peak'] / MB:,.0f} MB, Binder estimate {memory['binder'] / MB:,.0f} MB"
            if memory["binder"] > args.limit_mb * MB:
                over.append(notebook.name)
        print(line)
    print(f"Done in {total:.0f} s. In the lecture, with D2L_EXT_PRESET={preset}, these runs replay.")
    if args.sections:
        os.environ.pop("D2L_EXT_RETRAIN", None)  # the runs are stored now: the sections replay them
        print(
            "Each section alone, in a fresh kernel after the set-up cells (seconds, kernel start included):"
        )
        for notebook in notebooks:
            print(f"  {notebook.name}")
            try:
                for title, seconds, replayed in run_sections(notebook, args.timeout):
                    record["sections"].setdefault(notebook.name, {})[title[3:]] = round(seconds, 1)
                    print(f"    {seconds:6.1f} s  {title[3:]:62.62s}  replays: {replayed}")
            except CellExecutionError as e:
                print(str(e), file=sys.stderr)
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

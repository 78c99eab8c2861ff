"""Peak memory (RSS) of each notebook's kernel, run end to end in a preset (default ``demo``).

mybinder.org gives a session 1-2 GB for everything, the Jupyter server included, so each
notebook's kernel should stay under 1.5 GB. Every notebook runs in a fresh kernel (nbclient, the
notebook's folder as working directory); the peak is the kernel's high-water mark of resident
memory (``VmHWM`` in /proc, kept by Linux itself), or the sampled RSS of the kernel with any
child processes if that is higher. Where the kernel runs PyTorch's CUDA build (PyPI's default on
Linux), the resident pages of its CUDA libraries are reported and subtracted for the Binder
figure, since Binder installs the CPU-only build; the limit applies to that figure.

    .venv/bin/python tools/measure_memory.py                      # every notebook, demo preset
    .venv/bin/python tools/measure_memory.py notebooks/00_fashion_mnist.ipynb --preset ci

Prints a Markdown table (MB = 10^6 bytes) and writes it with the raw figures to
``build/memory/<preset>.json``; exits 1 when a notebook fails or goes over ``--limit-mb``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO = Path(__file__).resolve().parents[1]
MB = 1e6


def high_water_mark(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (Linux's ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


# Shared libraries of PyTorch's CUDA build. Binder installs the CPU-only build, which has none of
# them, so their resident pages are subtracted for the Binder estimate.
CUDA_LIBS = re.compile(r"/(nvidia|triton)/|lib(torch_cuda|cu\w+|nv\w+|nccl\w*)\.so", re.I)


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


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants (e.g. data-loader workers)."""

    def __init__(self, process: psutil.Process, every: float = 0.1):
        super().__init__(daemon=True)
        self.process, self.every, self.peak = process, every, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.peak = max(self.peak, rss)
            except psutil.NoSuchProcess:
                return
            self.done.wait(self.every)


def measure(path: Path, cell_timeout: int) -> dict:
    """Run one notebook in a fresh kernel; its peak RSS, wall time and outcome."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=cell_timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    result = {"notebook": path.name, "error": None, "rises": []}  # rises: cells that raised the peak
    start = time.perf_counter()
    with client.setup_kernel():
        kernel = psutil.Process(client.km.provisioner.pid)
        sampler = TreeSampler(kernel)
        sampler.start()
        try:
            for index, cell in enumerate(nb.cells):
                before = high_water_mark(kernel.pid)
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                if (rise := high_water_mark(kernel.pid) - before) > 0:
                    first_line = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                    result["rises"].append({"cell": index, "source": first_line, "rise": rise})
        except CellExecutionError as e:
            result["error"] = f"cell {index}: {e.ename}: {e.evalue}"[:300]
        except CellTimeoutError:
            result["error"] = f"cell {index}: no result within {cell_timeout} s"
        finally:
            result["kernel_hwm"] = high_water_mark(kernel.pid)
            result["cuda_libs"] = cuda_library_rss(kernel.pid)
            sampler.done.set()
            sampler.join()
            result["tree_peak"] = sampler.peak
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["peak"] = max(result["kernel_hwm"], result["tree_peak"])
    result["binder_estimate"] = result["peak"] - result["cuda_libs"]
    return result


def table(results: list[dict], preset: str, limit_mb: float) -> str:
    lines = [
        f"| notebook (`{preset}` preset) | peak RSS | CUDA libraries in it | Binder (CPU-only torch) "
        "| time | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        verdict = r["error"] or ("ok" if r["binder_estimate"] <= limit_mb * MB else f"over {limit_mb:.0f} MB")
        lines.append(
            f"| {r['notebook']} | {r['peak'] / MB:.0f} MB | {r['cuda_libs'] / MB:.0f} MB "
            f"| {r['binder_estimate'] / MB:.0f} MB | {r['seconds']:.0f} s | {verdict} |"
        )
    return "\n".join(lines)


def biggest_rises(r: dict, n: int = 3) -> str:
    """The cells that raised the kernel's peak the most (where to look when it is too high)."""
    rises = sorted(r["rises"], key=lambda x: -x["rise"])[:n]
    return "; ".join(f"cell {x['cell']} +{x['rise'] / MB:.0f} MB ({x['source']})" for x in rises)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--preset", default="demo", choices=("ci", "demo", "full"))
    parser.add_argument("--limit-mb", type=float, default=1500, help="fail above this peak (default 1500)")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--out", type=Path, help="JSON file (default build/memory/<preset>.json)")
    args = parser.parse_args(argv)

    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    os.environ["D2L_EXT_PRESET"] = args.preset  # inherited by each kernel
    results = []
    for path in notebooks:
        print(f"[memory] {path.name} in the {args.preset} preset ...", file=sys.stderr, flush=True)
        r = measure(path.resolve(), args.cell_timeout)
        print(f"[memory]   peak {r['peak'] / MB:.0f} MB in {r['seconds']:.0f} s", file=sys.stderr)
        print(f"[memory]   biggest rises: {biggest_rises(r)}", file=sys.stderr, flush=True)
        results.append(r)

    report = table(results, args.preset, args.limit_mb)
    print(report)
    out = args.out or REPO / "build" / "memory" / f"{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"preset": args.preset, "limit_mb": args.limit_mb, "cpus": os.cpu_count()}
    out.write_text(json.dumps({**meta, "results": results, "table": report}, indent=2) + "\n")
    bad = [r for r in results if r["error"] or r["binder_estimate"] > args.limit_mb * MB]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

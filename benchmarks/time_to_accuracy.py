#!/usr/bin/env python3
"""Time to accuracy: the book's settings against the ``demo`` preset, on this machine, same budget.

For each lecture model, trains twice for the same wall-clock budget of training (default 60 s):
once with the book's settings (its resolution, batch size, plain SGD at its learning rate, its
architecture) and once with the ``demo`` preset, then evaluates on the full 10,000-image test set.
Both read the data through d2l_ext's in-memory loader (kinder to the book than its own PIL
pipeline with worker processes). Prints a table and writes it as JSON:

    python benchmarks/time_to_accuracy.py [--budget 60] [--models bn_lenet resnet ...]
    python benchmarks/time_to_accuracy.py --show [results/time_to_accuracy.json]

Columns: images/s, epochs, test accuracy at the budget, seconds to reach ``--target`` on a
1,000-image probe (measured every budget/6 s, not counted as training), the whole training cell's
wall time (data, training, final evaluation), and the training's fp32 throughput, printed below
this machine's measured matrix-multiply throughput:

    GFLOP/s = (training FLOPs per image) x (images/s)

* training FLOPs per image: `torch.utils.flop_counter.FlopCounterMode` over one real training step
  (forward, loss, backward) of the trained model on 16 images; the backward is counted, not
  assumed to be twice the forward (the first layer computes no input gradient). Only matrix
  products and convolutions count, so BN, ReLU, pooling and the optimizer are left out.
* measured matmul: the fastest of several 4096x4096 fp32 matrix products, at the thread count the
  training runs with. Beside it the script states a theoretical peak, an estimate from
  ``/proc/cpuinfo``: vector lanes (16 fp32 with avx512f, 8 with avx2 and fma) x 2 FMA units per
  core (assumed, as on modern x86) x 2 FLOPs per FMA x cores used x clock.

The matmul is a yardstick, not a ceiling, so no fraction of it is printed: on a 2-core AMD EPYC
with AVX-512 (2026-12-07) the book's ResNet trained at 262 GFLOP/s against a matmul of 209. Its
count is torch's own, and on a 2-core Intel Xeon the same training step's convolutions all run as
direct ones (``ONEDNN_VERBOSE=1``: ``alg:convolution_direct``, no Winograd); the EPYC itself was not
inspected. Convolutions run in oneDNN and matrix products in MKL, which choose their kernels each
in its own way; which of them left that machine's speed unused was not measured.
The demo's accuracy target is the recipe's (``experiment(name, "demo").target``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import json
import os
import platform
import re
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import d2l_ext
from d2l_ext import Callback, FashionMNIST, Trainer, evaluate, experiment
from d2l_ext.data import balanced_subset
from d2l_ext.measure import count_flops, train_mode
from d2l_ext.presets import EXPERIMENTS
from d2l_ext.runs import cpu_name

RESULTS = Path(__file__).parent / "results" / "time_to_accuracy.json"
MATMUL_N, MATMUL_TRIES = 4096, 5  # the fastest of MATMUL_TRIES products of this size
# The experiments with a demo target, in the lecture's order.
MODELS = [name for name, recipe in EXPERIMENTS.items() if recipe.demo.target is not None]
FLOP_COUNT = "FlopCounterMode over one training step (forward, loss, backward), grouped-conv fix"


# -- FLOPs ------------------------------------------------------------------------------------


def _t(shape) -> list[int]:
    return [shape[1], shape[0], *shape[2:]]


def conv_backward_flop(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, groups, output_mask, out_shape, **kwargs,
) -> int:  # fmt: skip
    """torch's FLOP formula for ``aten.convolution_backward``, with a grouped convolution's weight
    gradient counted once.

    torch 2.14.1's ``conv_backward_flop`` (torch/utils/flop_counter.py) counts it ``groups`` times:
    it prices the weight gradient as a convolution of the transposed input with the transposed
    output gradient, shapes that lose the groups (tests/test_benchmark.py checks both counts).
    """
    flops = 0
    if output_mask[0]:  # input gradient: a transposed convolution of the output gradient
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # weight gradient: a convolution of the input with the output gradient
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(_t(a), _t(b), _t(out_shape[1]), transposed=False) // groups
    return flops


def train_step_flops(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward, cross-entropy, backward) of ``model`` on ``(X, y)``.

    In training mode; afterwards the model's mode, parameters, BN statistics and gradients are
    put back as they were. ``X``: (N, C, H, W) or (N, features); ``y``: (N,).
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flop}
    try:
        for p in model.parameters():
            p.grad = None  # else backward adds into the gradients we keep
        with train_mode(model), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            F.cross_entropy(model(X), y).backward()
    finally:
        model.load_state_dict(state)
        for p, grad in zip(model.parameters(), grads):
            p.grad = grad
    return counter.get_total_flops()


# -- the machine's peak ---------------------------------------------------------------------------


def matmul_peak(n: int = MATMUL_N, tries: int = MATMUL_TRIES) -> float:
    """Measured fp32 matrix-multiply throughput in FLOP/s: the fastest of ``tries`` n x n products,
    at the current thread count (the minimum, since other programs can only add time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def theoretical_peak(threads: int, cpuinfo: str, max_khz: str | None = None) -> dict | None:
    """An estimate of the fp32 peak from ``/proc/cpuinfo``'s text: lanes x FMA units x 2 x cores x clock.

    ``max_khz``: cpufreq's ``cpuinfo_max_freq`` where the kernel has it (a VM often shows only
    ``cpu MHz``, which may be below the boost clock). None where the CPU's vector width is unknown.
    """
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)[1].split()) if "flags" in cpuinfo else set()
    if "avx512f" in flags:
        lanes, isa = 16, "avx512f"
    elif {"avx2", "fma"} <= flags:
        lanes, isa = 8, "avx2+fma"
    else:
        return None
    pairs = set(re.findall(r"^physical id\s*:\s*(\d+)$.*?^core id\s*:\s*(\d+)$", cpuinfo, re.M | re.S))
    physical = len(pairs) or cpuinfo.count("processor\t")
    cores = min(threads, physical) if physical else threads
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
    if max_khz:
        ghz, clock = int(max_khz) / 1e6, "cpufreq's maximum clock"
    elif mhz:
        ghz, clock = float(mhz[1]) / 1e3, "cpu MHz in /proc/cpuinfo"
    else:
        return None
    fma_units = 2  # assumed: two FMA pipes per core on modern x86
    gflops = lanes * fma_units * 2 * cores * ghz
    basis = (
        f"an estimate: {lanes} fp32 lanes ({isa}) x {fma_units} FMA units (assumed) x 2 FLOPs per FMA "
        f"x {cores} cores used x {ghz:.2f} GHz ({clock})"
    )
    return {"gflops": gflops, "basis": basis}


def machine_info() -> dict:
    """The machine, the thread count the training runs with, its measured matmul and estimated peak."""
    threads = torch.get_num_threads()
    info = Path("/proc/cpuinfo")
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    estimate = theoretical_peak(
        threads,
        info.read_text() if info.exists() else "",
        max_freq.read_text().strip() if max_freq.exists() else None,
    )
    return {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "d2l_ext": d2l_ext.__version__,
        "python": platform.python_version(),
        "fp32_matmul_peak_gflops": matmul_peak() / 1e9,
        "fp32_theoretical_peak": estimate,
    }


# -- the runs ---------------------------------------------------------------------------------------


def verdict(name: str, test_acc: float) -> dict:
    """Whether the demo run of ``name`` reached its recipe's target (``experiment(name, 'demo').target``)."""
    target = experiment(name, "demo", verbose=False).target
    return {"demo_target": target, "demo_meets_target": test_acc >= target}


def model_class(name: str) -> type:
    """The class the benchmark trains for experiment ``name``: the first of its recipe's models."""
    module, cls = EXPERIMENTS[name].models[0].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


class Probes(Callback):
    """Accuracy on ``size`` class-balanced validation images every ``every`` seconds of training, in
    ``probes`` as (seconds, accuracy), for time to accuracy. Their time goes to ``seconds`` and moves
    the trainer's ``clock_start`` on, so that it does not count as training."""

    def __init__(self, every: float, size: int):
        self.every, self.size = every, size

    def before_fit(self, trainer):
        val = trainer.val_dataloader
        idx = balanced_subset(val.targets.cpu(), min(self.size, len(val.targets))).to(val.targets.device)
        self.loader = copy.copy(val)  # the validation loader's settings, fewer images
        self.loader.images, self.loader.targets = val.images[idx], val.targets[idx]
        self.probes, self.seconds, self.next = [], 0.0, self.every

    def after_batch(self, trainer):
        if trainer.train_seconds < self.next:
            return
        start = time.perf_counter()
        acc = evaluate(trainer.model, self.loader, trainer.device, trainer.channels_last)["acc"]
        spent = time.perf_counter() - start
        trainer.clock_start += spent
        self.seconds += spent
        self.probes.append((trainer.train_seconds, acc))
        self.next += self.every


def run(name: str, setting: str, budget: float, target: float) -> dict:
    Model = model_class(name)
    cfg = experiment(name, "full" if setting == "book" else "demo", verbose=False)
    if setting == "book":  # the book's loop: plain SGD at the model's lr, evaluated at the end
        trainer_kw = dict(max_epochs=10_000, time_budget=budget, eval_every=0)
    else:
        trainer_kw = dict(cfg.trainer, time_budget=budget)
    cell_start = time.perf_counter()
    data = FashionMNIST(**cfg.data, verbose=False)
    model = Model(**cfg.model)
    probes = Probes(every=budget / 6, size=1000)
    trainer = Trainer(**trainer_kw, plot=False, callbacks=[probes])
    trainer.fit(model, data)
    cell = time.perf_counter() - cell_start - probes.seconds
    X, y = (t[:16].to(trainer.device) for t in next(iter(data.train_dataloader())))
    if trainer.channels_last:
        X = X.contiguous(memory_format=torch.channels_last)
    forward = count_flops(model, X) / len(X)
    train = train_step_flops(model, X, y) / len(X)
    ips = trainer.images_seen / trainer.train_seconds
    reached = next((t for t, acc in probes.probes if acc >= target), None)
    return {
        "model": name,
        "setting": setting,
        "input": f"{data.resize[0]}x{data.resize[1]}",
        "images_per_s": ips,
        "epochs": trainer.images_seen / len(data.train),
        "train_s": trainer.train_seconds,
        "cell_s": cell,
        "test_acc": trainer.history[-1]["val_acc"],
        "seconds_to_target": reached,
        "forward_mflops_per_image": forward / 1e6,
        "train_mflops_per_image": train / 1e6,
        "probes": probes.probes,
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Per model: the demo's verdict against its target, and the demo-over-book ratios."""
    summary = []
    for name in dict.fromkeys(r["model"] for r in rows):
        got = {r["setting"]: r for r in rows if r["model"] == name}
        line = {"model": name}
        if "demo" in got:
            line |= verdict(name, got["demo"]["test_acc"])
        if {"book", "demo"} <= got.keys():
            b, d = got["book"], got["demo"]
            line["images_per_s_ratio"] = d["images_per_s"] / b["images_per_s"]
            both = b["seconds_to_target"] is not None and d["seconds_to_target"] is not None
            line["time_to_target_ratio"] = b["seconds_to_target"] / d["seconds_to_target"] if both else None
        summary.append(line)
    return summary


# -- the report -------------------------------------------------------------------------------------


def describe_machine(results: dict) -> str:
    m = results["machine"]
    text = (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} threads"
        f"{', ' + m['date'] if 'date' in m else ''}; {results['budget_s']:.0f} s of training per run\n"
        f"fp32 matmul, measured: {m['fp32_matmul_peak_gflops']:.0f} GFLOP/s "
        f"(the fastest of {MATMUL_TRIES} {MATMUL_N}x{MATMUL_N} products on {m['torch_threads']} threads)"
    )
    if est := m.get("fp32_theoretical_peak"):
        text += f"\nfp32 peak, theoretical: {est['gflops']:.0f} GFLOP/s, {est['basis']}"
        if m["fp32_matmul_peak_gflops"] > est["gflops"]:
            text += " (measured above it: the clock runs faster than cpuinfo says, e.g. boost)"
    return text


def header(results: dict) -> str:
    return (
        "| model | setting | input | images/s | epochs | test acc "
        f"| s to {results['target']:.0%} | cell s | GFLOP/s |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    )


def fmt_row(r: dict) -> str:
    tt = f"{r['seconds_to_target']:.0f}" if r["seconds_to_target"] is not None else "-"
    gflops = r["train_mflops_per_image"] * r["images_per_s"] / 1e3
    return (
        f"| {r['model']} | {r['setting']} | {r['input']} | {r['images_per_s']:,.0f} | {r['epochs']:.2f} "
        f"| {r['test_acc']:.2%} | {tt} | {r['cell_s']:.0f} | {gflops:,.1f} |"
    )


def _reached(row: dict) -> str:
    return "never" if row["seconds_to_target"] is None else f"in {row['seconds_to_target']:.0f} s"


def fmt_summary(results: dict) -> str:
    rows = {(r["model"], r["setting"]): r for r in results["rows"]}
    lines = ["Demo over book:"]
    for s in results["summary"]:
        name, parts = s["model"], []
        if "images_per_s_ratio" in s:
            b, d = rows[name, "book"], rows[name, "demo"]
            parts += [
                f"images/s x{s['images_per_s_ratio']:.1f}",
                f"to {results['target']:.0%}: book {_reached(b)}, demo {_reached(d)}",
                f"test accuracy {b['test_acc']:.1%} -> {d['test_acc']:.1%}",
            ]
        if "demo_target" in s:
            verdict_ = "met" if s["demo_meets_target"] else "MISSED"
            parts.append(f"demo target {s['demo_target']:.0%}: {verdict_}")
        lines.append(f"  {name:9s} " + "; ".join(parts))
    return "\n".join(lines)


def show(path: Path) -> None:
    """Print the results in ``path`` (the committed ones by default) as the benchmark prints them."""
    results = json.loads(path.read_text())
    print(f"{path}\n{describe_machine(results)}\n\n{header(results)}")
    print(*(fmt_row(r) for r in results["rows"]), sep="\n")
    print(f"\n{fmt_summary(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training per run")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--settings", nargs="+", default=["book", "demo"], choices=["book", "demo"])
    parser.add_argument("--target", type=float, default=0.85, help="accuracy for the time-to-target ratio")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--show",
        type=Path,
        nargs="?",
        const=RESULTS,
        help="print saved results (default: the committed ones)",
    )
    args = parser.parse_args()
    if args.show:
        return show(args.show)

    results = {"machine": machine_info(), "budget_s": args.budget, "target": args.target}
    results["flop_count"] = FLOP_COUNT
    print(f"{describe_machine(results)}\n\n{header(results)}", flush=True)
    rows = results["rows"] = []
    for name in args.models:
        for setting in args.settings:
            rows.append(run(name, setting, args.budget, args.target))
            print(fmt_row(rows[-1]), flush=True)
    results["summary"] = summarize(rows)
    print(f"\n{fmt_summary(results)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

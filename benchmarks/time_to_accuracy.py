#!/usr/bin/env python3
"""Time to accuracy: the book's settings against the ``demo`` preset, on this machine, same budget.

For each lecture model, trains twice for the same wall-clock budget of training (default 60 s):
once with the book's settings (its resolution, batch size, plain SGD at its learning rate, its
architecture) and once with the ``demo`` preset, then evaluates on the full 10,000-image test set.
Both read the data through d2l_ext's in-memory loader (kinder to the book than its own PIL
pipeline with worker processes). Prints a table and writes it as JSON:

    python benchmarks/time_to_accuracy.py [--budget 60] [--models bn_lenet resnet ...]

Columns: images/s, epochs, test accuracy at the budget, seconds to reach ``--target`` on a
1,000-image probe (measured every budget/6 s, not counted as training), the whole training
cell's wall time (data, training, final evaluation), and training throughput as a fraction of this
machine's measured fp32 matrix-multiply peak (3x the forward FLOPs per image, the usual estimate of
forward plus backward).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import d2l_ext
from d2l_ext import FashionMNIST, Trainer, experiment

MODELS = {  # experiment name -> (module, class) of the lecture's model
    "bn_lenet": ("d2l_ext.batch_norm", "BNLeNet"),
    "resnet": ("d2l_ext.resnet", "ResNet"),
    "resnext": ("d2l_ext.resnext", "ResNeXt"),
    "densenet": ("d2l_ext.densenet", "DenseNet"),
}
DEMO_TARGETS = {"bn_lenet": 0.90, "resnet": 0.92, "resnext": 0.91, "densenet": 0.90}


def matmul_peak(n: int = 2048, repeat: int = 10) -> float:
    """Measured fp32 matrix-multiply throughput of this machine, in FLOP/s (best of three)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeat / best


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )


def forward_flops(model: torch.nn.Module, X: torch.Tensor) -> float:
    """FLOPs of one forward pass per image, counted by torch's FlopCounterMode."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(X)
    model.train(was_training)
    return counter.get_total_flops() / len(X)


def run(name: str, setting: str, budget: float, peak: float, target: float) -> dict:
    module, cls = MODELS[name]
    Model = getattr(importlib.import_module(module), cls)
    cfg = experiment(name, "full" if setting == "book" else "demo", verbose=False)
    if setting == "book":  # the book's loop: plain SGD at the model's lr, evaluated at the end
        trainer_kw = dict(max_epochs=10_000, time_budget=budget, eval_every=0)
    else:
        trainer_kw = dict(cfg.trainer, time_budget=budget)
    cell_start = time.perf_counter()
    data = FashionMNIST(**cfg.data, verbose=False)
    model = Model(**cfg.model)
    trainer = Trainer(**trainer_kw, probe_every=budget / 6, probe_size=1000, plot=False)
    trainer.fit(model, data)
    cell = time.perf_counter() - cell_start - trainer.probe_seconds
    X = next(iter(data.val_dataloader()))[0][:16]
    flops = forward_flops(
        model, X.contiguous(memory_format=torch.channels_last) if trainer.channels_last else X
    )
    ips = trainer.images_seen / trainer.train_seconds
    reached = next((t for t, acc in trainer.probes if acc >= target), None)
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
        "fraction_of_peak": 3 * flops * ips / peak,
        "forward_mflops_per_image": flops / 1e6,
        "probes": trainer.probes,
    }


def fmt_row(r: dict) -> str:
    tt = f"{r['seconds_to_target']:.0f}" if r["seconds_to_target"] is not None else "-"
    return (
        f"| {r['model']} | {r['setting']} | {r['input']} | {r['images_per_s']:,.0f} | {r['epochs']:.2f} "
        f"| {r['test_acc']:.2%} | {tt} | {r['cell_s']:.0f} | {r['fraction_of_peak']:.1%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training per run")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--settings", nargs="+", default=["book", "demo"], choices=["book", "demo"])
    parser.add_argument("--target", type=float, default=0.85, help="accuracy for the time-to-target ratio")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "time_to_accuracy.json"
    )
    args = parser.parse_args()

    peak = matmul_peak()
    cpu = cpu_name()
    machine = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "d2l_ext": d2l_ext.__version__,
        "python": platform.python_version(),
        "fp32_matmul_peak_gflops": peak / 1e9,
    }
    print(
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads; "
        f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; budget {args.budget:.0f} s of training per run\n"
    )
    header = (
        "| model | setting | input | images/s | epochs | test acc "
        f"| s to {args.target:.0%} | cell s | of peak |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    print(header, flush=True)
    rows = []
    for name in args.models:
        for setting in args.settings:
            rows.append(run(name, setting, args.budget, peak, args.target))
            print(fmt_row(rows[-1]), flush=True)
    print("\nRatios, demo over book:")
    summary = []
    for name in args.models:
        got = {r["setting"]: r for r in rows if r["model"] == name}
        line = {"model": name, "demo_target": DEMO_TARGETS[name]}
        if "demo" in got:
            line["demo_meets_target"] = got["demo"]["test_acc"] >= DEMO_TARGETS[name]
        if {"book", "demo"} <= got.keys():
            b, d = got["book"], got["demo"]
            line["images_per_s_ratio"] = d["images_per_s"] / b["images_per_s"]
            both = b["seconds_to_target"] is not None and d["seconds_to_target"] is not None
            line["time_to_target_ratio"] = b["seconds_to_target"] / d["seconds_to_target"] if both else None
            tt = f"{line['time_to_target_ratio']:.1f}x faster" if both else "book never reached it"
            verdict = "met" if line["demo_meets_target"] else "MISSED"
            print(
                f"  {name:9s} images/s x{line['images_per_s_ratio']:.1f}; to {args.target:.0%}: {tt}; "
                f"test accuracy {b['test_acc']:.1%} -> {d['test_acc']:.1%} "
                f"(target {DEMO_TARGETS[name]:.0%}: {verdict})"
            )
        summary.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine,
                "budget_s": args.budget,
                "target": args.target,
                "rows": rows,
                "summary": summary,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

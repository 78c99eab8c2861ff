#!/usr/bin/env python3
"""The ``full`` preset (the book's settings) of the notebooks' trainings, run once on a GPU.

For each experiment, trains the first model class of its recipe with the ``full`` settings, exactly
as the notebooks do (``FashionMNIST(**cfg.data)``, ``Trainer(**cfg.trainer)``), evaluates on the
10,000 test images, and records the training time, images/s, epochs, test accuracy and whether the
recipe's floor was met. The JSON is rewritten after every run, so a run cut short keeps what it
finished:

    python benchmarks/full_preset.py [--experiments resnet densenet ...] [--out FILE]

Meant for a CUDA GPU (``make gpu-check``); on a CPU the book's settings take hours.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import time
from pathlib import Path

import torch

import d2l_ext
from d2l_ext import FashionMNIST, Trainer, experiment
from d2l_ext.presets import EXPERIMENTS

DEFAULT = ("lenet", "bn_lenet", "resnet", "resnext", "densenet")


def model_class(dotted: str) -> type:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "d2l_ext": d2l_ext.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
    }


def run(name: str, preset: str = "full") -> dict:
    cfg = experiment(name, preset, verbose=False)
    Model = model_class(EXPERIMENTS[name].models[0])
    start = time.perf_counter()
    data = FashionMNIST(**cfg.data, verbose=False)
    trainer = Trainer(**cfg.trainer, plot=False)
    trainer.fit(Model(**cfg.model), data)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    last = trainer.history[-1]
    acc = last.get("val_acc")
    return {
        "experiment": name,
        "model": Model.__name__,
        "input": f"{data.resize[0]}x{data.resize[1]}",
        "epochs": trainer.images_seen / len(data.train),
        "steps": last["steps"],
        "train_s": trainer.train_seconds,
        "cell_s": time.perf_counter() - start,
        "images_per_s": trainer.images_seen / trainer.train_seconds,
        "test_acc": acc,
        "floor": cfg.floor,
        "meets_floor": None if cfg.floor is None or acc is None else acc >= cfg.floor,
        "summary": trainer.summary(),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--experiments", nargs="+", default=list(DEFAULT), choices=sorted(EXPERIMENTS))
    parser.add_argument("--preset", default="full", help="another preset, e.g. ci for a quick check")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "full_preset.json")
    args = parser.parse_args()
    if args.preset == "full" and not torch.cuda.is_available():
        print("No CUDA GPU: the full preset takes hours on a CPU (about 44 images/s for ResNet-18).")
    results = {"machine": machine(), "preset": args.preset, "rows": []}
    print(results["machine"])
    for name in args.experiments:
        row = run(name, args.preset)
        results["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        floor = "" if row["floor"] is None else f", floor {row['floor']:.0%}: {row['meets_floor']}"
        print(f"{name:9s} {row['summary']}{floor}; cell {row['cell_s']:.0f} s", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The closing tables of the notebooks: what the reader's own run measured, and the reference figures
of a quiet machine from the committed benchmark (benchmarks/results), labelled with where they ran.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["REFERENCE_RESULTS", "load_reference", "reference_results", "summary_table"]

#: Results of `make bench` (benchmarks/time_to_accuracy.py) on a quiet machine, committed with the repo.
REFERENCE_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "time_to_accuracy.json"


def load_reference(path: Path = REFERENCE_RESULTS) -> dict[str, Any]:
    """The committed benchmark's record, or a FileNotFoundError that says how to make it."""
    if not path.is_file():
        raise FileNotFoundError(f"No reference results at {path}; run `make bench` to measure them.")
    return json.loads(path.read_text())


def summary_table(measured: Mapping[str, Any]):
    """The closing table of a notebook, a DataFrame: each quantity the reader's run measured, by its
    description (a float in [0, 1] whose description says "accuracy" is shown as a percentage)."""

    def fmt(name: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1%}" if "accuracy" in name.lower() and 0 <= value <= 1 else f"{value:,.4g}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return pd.DataFrame({"this run": {k: fmt(k, v) for k, v in measured.items()}})


def reference_results(models: Sequence[str] | None = None, path: Path = REFERENCE_RESULTS):
    """Reference figures from a quiet machine: prints where, when and how long the committed
    benchmark ran, and returns a DataFrame with a row per model and setting (the book's, the demo's)."""
    results = load_reference(path)
    m = results["machine"]
    print(
        f"Reference run: {m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} "
        f"threads, {m.get('date', 'date not recorded')}; {results['budget_s']:.0f} s of training per run"
    )
    rows = [r for r in results["rows"] if models is None or r["model"] in models]
    table = pd.DataFrame(
        {
            "model": r["model"],
            "setting": "demo preset" if r["setting"] == "demo" else "book's settings",
            "input": r["input"],
            "images/s": round(r["images_per_s"]),
            "epochs": round(r["epochs"], 2),
            "test accuracy": f"{r['test_acc']:.1%}",
        }
        for r in rows
    )
    return table.set_index(["model", "setting"])

"""The closing tables of the notebooks: what the reader's run measured, beside the committed
benchmark's figures from a quiet machine (benchmarks/results), labelled with where they ran."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["REFERENCE_RESULTS", "load_reference", "reference_results", "summary_table"]

#: What `make bench` (benchmarks/time_to_accuracy.py) measured on a quiet machine, committed.
REFERENCE_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "time_to_accuracy.json"


def load_reference(path: Path = REFERENCE_RESULTS) -> dict:
    """The committed benchmark's record, or a FileNotFoundError that says how to make it."""
    if not path.is_file():
        raise FileNotFoundError(f"No reference results at {path}; run `make bench` to measure them.")
    return json.loads(path.read_text())


def _format(name: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if "accuracy" in name.lower() and 0 <= value <= 1 else f"{value:,.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_table(measured: Mapping[str, object]) -> pd.DataFrame:
    """The closing table of a notebook: each quantity the reader's run measured, by its description
    (a float in [0, 1] described as an "accuracy" shows as a percentage)."""
    return pd.DataFrame({"this run": {name: _format(name, value) for name, value in measured.items()}})


def reference_results(models: Sequence[str] | None = None) -> pd.DataFrame:
    """Prints where, when and how long the committed benchmark ran, and returns its rows for ``models``
    (all if None) by model and setting (the book's, the demo's)."""
    results = load_reference()
    m = results["machine"]
    print(
        f"Reference run: {m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} "
        f"threads, {m.get('date', 'date not recorded')}; {results['budget_s']:.0f} s of training per run"
    )
    table = pd.DataFrame(
        {
            "model": r["model"],
            "setting": "demo preset" if r["setting"] == "demo" else "book's settings",
            "input": r["input"],
            "images/s": round(r["images_per_s"]),
            "epochs": round(r["epochs"], 2),
            "test accuracy": f"{r['test_acc']:.1%}",
        }
        for r in results["rows"]
        if models is None or r["model"] in models
    )
    return table.set_index(["model", "setting"])

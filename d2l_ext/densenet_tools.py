"""Measurements, figures and tables of notebook 04 (DenseNet)."""

import contextlib
import os
from collections.abc import Mapping

import ipywidgets as widgets
import pandas as pd
import torch
from d2l import torch as d2l
from torch.profiler import ProfilerActivity, profile

from d2l_ext.densenet import DenseNet, densenet_channels
from d2l_ext.measure import count_flops, num_params
from d2l_ext.results import load_reference

__all__ = [
    "architecture_table", "densenet_explorer", "densenet_num_params", "format_architecture_table",
    "op_time_shares", "plot_connectivity", "reference_architecture_table", "relative_to",
]  # fmt: skip


def densenet_num_params(num_channels=64, growth_rate=32, arch=(4, 4, 4, 4), **kwargs) -> int:
    """Parameter count of ``DenseNet(num_channels, growth_rate, arch, **kwargs)`` for 1-channel images."""
    net = DenseNet(num_channels, growth_rate, arch, **kwargs)
    return num_params(net, torch.zeros(1, 1, net.min_input(), net.min_input()))


def plot_connectivity(num_convs: int = 4, in_channels: int = 3, growth_rate: int = 10) -> int:
    """Draw a chain of residual blocks above a dense block of ``num_convs`` layers: circles are maps,
    boxes layers, arrows inputs. Returns the number of arrows into the dense block's layers."""
    heights = [2.1, 1.3 + 0.6 * num_convs]
    size = (1.2 * num_convs + 1, 0.6 * sum(heights) + 1)
    _, axes = d2l.plt.subplots(2, 1, figsize=size, height_ratios=heights)
    arrows = 0
    for ax, dense, height in zip(axes, (False, True), heights):
        for i in range(num_convs + 1):  # map i at x = 2i, the layer that makes it at x = 2i - 1
            ax.add_patch(d2l.plt.Circle((2 * i, 0), 0.3, color=f"C{i if dense else 0}", alpha=0.8))
            ax.text(2 * i, -0.45, growth_rate if dense and i else in_channels, ha="center", va="top")
            if i == 0:
                continue
            reads = in_channels + (i - 1) * growth_rate if dense else in_channels
            name = f"$f_{i}$" if dense else f"$g_{i}$"
            ax.text(2 * i - 1, 0, name, ha="center", va="center", bbox=dict(fc="w", ec="0.3"))
            ax.text(2 * i - 1, -0.45, f"in {reads}", ha="center", va="top", fontsize=8, color="0.4")
            ax.annotate("", (2 * i - 0.3, 0), (2 * i - 0.75, 0), arrowprops=dict(arrowstyle="->"))
            for j in range(i) if dense else [i - 1]:
                style = dict(arrowstyle="->", color=f"C{j if dense else 0}")
                if j == i - 1:
                    ax.annotate("", (2 * i - 1.3, 0), (2 * j + 0.3, 0), arrowprops=style)
                else:  # long-range inputs arc above the chain, higher the farther they reach
                    style["connectionstyle"] = "arc3,rad=-0.35"
                    ax.annotate("", (2 * i - 1.15, 0.25), (2 * j + 0.15, 0.28), arrowprops=style)
                arrows += dense
            if not dense:  # x_i = x_{i-1} + g_i(x_{i-1}): the identity path is the red arc
                ax.text(2 * i, 0, "+", ha="center", va="center", color="w", fontsize=14)
                style = dict(arrowstyle="->", color="C3", connectionstyle="arc3,rad=-0.5")
                ax.annotate("", (2 * i - 0.15, 0.28), (2 * i - 1.85, 0.28), arrowprops=style)
        total = in_channels + num_convs * growth_rate
        title = f"dense block: concatenate, {in_channels} + {num_convs}x{growth_rate} = {total} channels out"
        ax.set_title(title if dense else "residual blocks: add")
        ax.set(xlim=(-0.5, 2 * num_convs + 0.5), ylim=(-0.9, height - 0.9), aspect="equal")
        ax.axis("off")
    return arrows


def densenet_explorer(resnet18_params: int):
    """Sliders for the stem's width, the growth rate and the conv blocks per dense block, printing the
    channels after every stage and the parameters (beside ResNet-18's); computed at once, so that the
    cell also runs headless."""

    def view(num_channels, growth_rate, num_convs):
        arch = (num_convs,) * 4
        channels = " -> ".join(str(c) for _, c in densenet_channels(num_channels, growth_rate, arch))
        params = densenet_num_params(num_channels, growth_rate, arch)
        text = f"channels: {channels}\nparameters: {params:,} (ResNet-18: {resnet18_params:,})"
        print(text)
        return text

    def slider(low, high, step, value):
        return widgets.IntSlider(value=value, min=low, max=high, step=step, continuous_update=False)

    explorer = widgets.interactive(
        view,
        num_channels=slider(16, 128, 16, 64),
        growth_rate=slider(8, 64, 8, 32),
        num_convs=slider(1, 8, 1, 4),
    )
    explorer.update()
    return explorer


def architecture_table(runs: dict) -> pd.DataFrame:
    """One row per ``name: (net, trainer, cfg)`` of ``runs``: parameters, forward MFLOPs per image at
    the training resolution, training images/s and validation accuracy."""
    rows = {}
    for name, (net, trainer, cfg) in runs.items():
        size = cfg.data.get("resize", 28)
        X = torch.zeros(1, 1, size, size, device=next(net.parameters()).device)
        last = trainer.history[-1]
        rows[name] = {
            "parameters": num_params(net),
            "MFLOPs/image": count_flops(net, X) / 1e6,
            "images/s": trainer.images_seen / last["seconds"],
            "val acc": last["val_acc"],
        }
    return pd.DataFrame(rows).T


def reference_architecture_table(models: Mapping[str, str], setting: str = "demo") -> pd.DataFrame:
    """`architecture_table`'s columns, with epochs, from the committed benchmark's rows of ``setting``
    ("demo" or "book") for ``models`` (a display name -> the benchmark's model name)."""
    rows = {r["model"]: r for r in load_reference()["rows"] if r["setting"] == setting}
    missing = sorted(set(models.values()) - set(rows))
    if missing:
        raise KeyError(
            f"The reference results have no {setting!r} rows for {missing}; known: {sorted(rows)}."
        )
    columns = {"MFLOPs/image": "forward_mflops_per_image", "images/s": "images_per_s", "epochs": "epochs"}
    columns["val acc"] = "test_acc"
    table = {name: {c: rows[key][k] for c, k in columns.items()} for name, key in models.items()}
    return pd.DataFrame(table).T


def relative_to(table: pd.DataFrame, reference: str = "ResNet") -> pd.DataFrame:
    """``table`` with each model's FLOPs per second of training over ``reference``'s, and its accuracy
    minus the reference's."""
    if reference not in table.index:
        raise KeyError(f"No row {reference!r} to compare with; the rows are {list(table.index)}.")
    out = table.copy()
    rate = table["images/s"] * table["MFLOPs/image"]
    out[f"MFLOP/s vs {reference}"] = rate / rate[reference]
    out[f"acc vs {reference}"] = table["val acc"] - table.loc[reference, "val acc"]
    return out


def format_architecture_table(table: pd.DataFrame):
    """``table`` styled for display: thousands, one decimal, percentages, ratios with two decimals."""
    formats = {"parameters": "{:,.0f}", "MFLOPs/image": "{:.1f}", "images/s": "{:,.0f}", "epochs": "{:.2f}"}
    formats |= {"val acc": "{:.1%}"} | {c: "{:.2f}" for c in table.columns if c.startswith("MFLOP/s vs")}
    formats |= {c: "{:+.1%}" for c in table.columns if c.startswith("acc vs")}
    return table.style.format({c: f for c, f in formats.items() if c in table.columns})


# What each kind of operation is called in the profile (lower case, a part of the name suffices).
OP_KINDS = {
    "convolution": ("conv",),
    "BN": ("batch_norm",),
    "ReLU": ("relu", "clamp_min", "threshold"),
    "pooling": ("pool",),
    "cat": ("aten::cat",),
}


@contextlib.contextmanager
def _stderr_silenced():
    # The profiler's C++ side writes its start and stop (and, in a CUDA build on a CPU, a device
    # count error) to the process's stderr, below Python's sys.stderr: only the file descriptor
    # can be quieted.
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def op_time_shares(net, X: torch.Tensor, y: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Each kind of operation's share (`OP_KINDS`, the rest "other") of the self CPU time of
    ``steps`` forward and backward passes of ``net`` on one thread, and the milliseconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: shares that a busy second core does not move
    try:
        net.loss(net(X), y).backward()  # warm-up: first-call allocations stay out of the profile
        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                net.loss(net(X), y).backward()
    finally:
        torch.set_num_threads(threads)
    times = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for event in prof.key_averages():  # self time: each microsecond counted once
        name = event.key.lower()
        kind = next((k for k, parts in OP_KINDS.items() if any(p in name for p in parts)), "other")
        times[kind] += event.self_cpu_time_total
    total = sum(times.values())
    return {k: t / total for k, t in times.items()} | {"ms per step": total / 1e3 / steps}

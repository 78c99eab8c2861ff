"""Figures and widget views of the notebooks: hand-written, tested, kept apart from the lecture's code.

The widget cells in the notebooks stay thin: each calls one function here, which computes with
`d2l_ext.measure` and the topic modules, and draws with matplotlib (through d2l's ``plt``).
Sections follow the lecture's order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__: list[str] = []

# -- shared by every notebook ---------------------------------------------------------------------

#: Results of `make bench` (benchmarks/time_to_accuracy.py) on a quiet machine, committed with the repo.
REFERENCE_RESULTS = (
    Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "time_to_accuracy.json"
)


def summary_table(measured: Mapping[str, Any]):
    """The closing table of a notebook: each quantity the reader's own run just measured, as printed.

    ``measured`` maps a description to a value (a float in [0, 1] is shown as a percentage when its
    description says "accuracy"); returns a pandas DataFrame, which Jupyter shows as a table.
    """
    import pandas as pd

    def fmt(name: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1%}" if "accuracy" in name.lower() and 0 <= value <= 1 else f"{value:,.4g}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return pd.DataFrame({"this run": {k: fmt(k, v) for k, v in measured.items()}})


def reference_results(models: Sequence[str] | None = None, path: Path = REFERENCE_RESULTS):
    """Reference figures from a quiet machine: the committed benchmark, labelled with where it ran.

    Prints one line naming the machine, the date and the training budget, and returns a DataFrame
    with a row per (model, setting): ``book`` is the book's settings, ``demo`` the demo preset.
    """
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"No reference results at {path}; run `make bench` to measure them.")
    results = json.loads(path.read_text())
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


__all__ += ["REFERENCE_RESULTS", "reference_results", "summary_table"]

# -- 01 · batch and layer normalization ----------------------------------------------------------


def batch_noise_figure(features: dict, batch_size: int, num_batches: int = 200):
    """Histograms, over ``num_batches`` random batches of ``batch_size`` and all units, of how far
    the batch statistics of each layer's ``features`` fall from the true ones (`batch_stat_noise`):
    the mean's error in standard deviations (left), the variance's ratio (right).

    ``features`` maps a layer's name to its inputs, (N, C) or (N, C, H, W). Returns the figure.
    """
    from d2l import torch as d2l

    from d2l_ext.measure import batch_stat_noise

    fig, axes = d2l.plt.subplots(1, 2, figsize=(9, 2.8))
    for name, f in features.items():
        err, ratio = batch_stat_noise(f, batch_size, num_batches)
        axes[0].hist(err.flatten().clamp(-3, 3), bins=60, range=(-3, 3), alpha=0.6, density=True, label=name)
        axes[1].hist(ratio.flatten().clamp(0, 3), bins=60, range=(0, 3), alpha=0.6, density=True, label=name)
    axes[0].set(xlabel="(batch mean - mean) / std", title=f"batch size {batch_size}: the mean (0 is right)")
    axes[1].set(xlabel="batch var / var", title="the variance (1 is right; 0: output is beta)")
    axes[1].legend(fontsize=8)
    return fig


def batch_noise_explorer(features: dict, sizes: list[int], value: int = 8, num_batches: int = 200):
    """A slider over the batch ``sizes`` that redraws `batch_noise_figure` for ``features``.

    Computed once before it is returned, so that the figure shows also where no browser runs.
    """
    import ipywidgets as widgets
    from d2l import torch as d2l

    def show(batch_size):
        batch_noise_figure(features, batch_size, num_batches)
        d2l.plt.show()

    slider = widgets.SelectionSlider(options=sizes, value=value, continuous_update=False)
    explorer = widgets.interactive(show, batch_size=slider)
    explorer.update()
    return explorer


__all__ += ["batch_noise_explorer", "batch_noise_figure"]

# -- 02 · ResNet ----------------------------------------------------------------------------------


def plot_function_fits(x, f_star, fits: dict, distances: dict):
    """A 1-D regression as function classes: ``f_star`` and the closest member of some classes
    (left), and the distance from ``f_star`` to each class (right, one line per family).

    ``x``, ``f_star`` and each value of ``fits`` (a label -> the fitted function) have shape (n,);
    ``distances`` maps a family's name to its distances, smallest class first. Returns the axes.
    """
    from d2l import torch as d2l

    fig, axes = d2l.plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(x, f_star, "k-", lw=3, alpha=0.4, label="$f^*$")
    for label, fit in fits.items():
        axes[0].plot(x, fit, "--", label=label)
    axes[0].set(xlabel="$x$", title="$f^*$ and the closest member of a class")
    axes[0].legend(fontsize=8)
    for (label, d), marker in zip(distances.items(), ("o-", "s-", "^-", "v-")):
        axes[1].plot(range(1, len(d) + 1), d, marker, label=label)
    axes[1].set(xlabel="class $i$", ylabel="RMS distance from $f^*$", yscale="log")
    axes[1].set_title("how close each class gets")
    axes[1].legend()
    return axes


def plot_step_losses(losses: dict, num_points: int = 25):
    """Training loss per step, averaged over a sliding window, one panel per network.

    ``losses`` maps (network name, number of layers) to the loss of every step; the window is
    ``len / num_points`` steps. Returns the axes, one per network in the order first met.
    """
    import torch
    from d2l import torch as d2l

    names = list(dict.fromkeys(name for name, _ in losses))
    fig, axes = d2l.plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for (net, layers), run in losses.items():
            if net == name:
                run = torch.tensor(run)
                w = max(1, len(run) // num_points)
                ax.plot(range(w, len(run) + 1), run.unfold(0, w, 1).mean(1), label=f"{layers} layers")
        ax.set(title=name, xlabel="step", yscale="log")
        ax.legend()
    axes[0][0].set_ylabel("training loss")
    return axes[0]


def plot_grad_rms(norms: dict, title: str = "", ax=None):
    """One line per network: the per-parameter RMS of the weight gradient of each convolution,
    input side first (log scale).

    ``norms`` maps a network's name to its `d2l_ext.measure.conv_grad_rms`. Returns the axes.
    """
    from d2l import torch as d2l

    if ax is None:
        _, ax = d2l.plt.subplots(figsize=(6, 3.2))
    for name, g in norms.items():
        ax.plot(range(1, len(g) + 1), g, ".-", label=name)
    ax.set(yscale="log", xlabel="convolution (input side first)", ylabel="gradient RMS at init")
    ax.set_title(title)
    ax.legend()
    return ax


def grad_rms_explorer(nets, widths, X, y, value: int, max_value: int = 9, **kwargs):
    """A slider for the blocks per stage, redrawing `plot_grad_rms` at initialization for each
    network class in ``nets`` (built with ``widths`` and ``kwargs``, on the minibatch ``X``, ``y``).

    Computed once before it is returned, so that the figure shows also where no browser runs.
    """
    import ipywidgets as widgets
    from d2l import torch as d2l

    from d2l_ext.measure import init_grad_rms

    def show(num_residuals):
        norms = {Net.__name__: init_grad_rms(Net, num_residuals, widths, X, y, **kwargs) for Net in nets}
        plot_grad_rms(norms, f"{2 * len(widths) * num_residuals + 2} layers")
        d2l.plt.show()

    slider = widgets.IntSlider(value, 1, max_value, continuous_update=False, description="blocks")
    explorer = widgets.interactive(show, num_residuals=slider)
    explorer.update()
    return explorer


__all__ += ["grad_rms_explorer", "plot_function_fits", "plot_grad_rms", "plot_step_losses"]

# -- 03 · ResNeXt ---------------------------------------------------------------------------------


def resnext_cost_view(c_i: int, c_o: int, groups: int, bot_mul: float):
    """What the cost explorer shows: `d2l_ext.measure.resnext_cost` as a table (parameters, FLOPs
    relative to the plain 3x3 convolution, MFLOPs), displayed and returned; or, for numbers the block
    refuses, the reason, printed, and None."""
    import pandas as pd
    from IPython.display import display

    from d2l_ext.measure import resnext_cost

    try:
        rows = resnext_cost(c_i, c_o, groups, bot_mul)
    except ValueError as e:
        print(f"Refused: {e}")
        return None
    table = pd.DataFrame(rows).set_index("module").rename_axis(None)
    table = table.assign(MFLOPs=table.flops / 1e6).drop(columns="flops").round(3)
    # interactive() shows only what its function displays, so display here, on every change.
    display(table)
    return table


__all__ += ["resnext_cost_view"]

# -- 04 · DenseNet --------------------------------------------------------------------------------


def plot_connectivity(num_convs: int = 4, in_channels: int = 3, growth_rate: int = 10) -> int:
    """Draw a chain of residual blocks above a dense block of ``num_convs`` layers (Huang et al., 2017).

    Circles are feature maps (channels below), boxes are layers (input channels below), arrows are
    inputs, coloured by the map they come from. Returns the number of arrows into the dense block's
    layers, ``num_convs * (num_convs + 1) / 2``.
    """
    from d2l import torch as d2l

    ylims = [(-0.9, 1.2), (-0.9, 0.4 + 0.6 * num_convs)]
    heights = [top - bottom for bottom, top in ylims]
    _, axes = d2l.plt.subplots(
        2, 1, figsize=(1.2 * num_convs + 1, 0.6 * sum(heights) + 1), height_ratios=heights
    )
    arrows = 0
    for ax, dense, ylim in zip(axes, (False, True), ylims):
        for i in range(num_convs + 1):  # map i at x = 2i, the layer that makes it at x = 2i - 1
            ax.add_patch(d2l.plt.Circle((2 * i, 0), 0.3, color=f"C{i if dense else 0}", alpha=0.8))
            ax.text(2 * i, -0.45, growth_rate if dense and i else in_channels, ha="center", va="top")
            if i == 0:
                continue
            if not dense:  # x_i = x_{i-1} + g_i(x_{i-1}): the identity path is the red arc
                ax.text(2 * i, 0, "+", ha="center", va="center", color="w", fontsize=14)
            name = f"$f_{i}$" if dense else f"$g_{i}$"
            ax.text(2 * i - 1, 0, name, ha="center", va="center", bbox=dict(fc="w", ec="0.3"))
            reads = in_channels + (i - 1) * growth_rate if dense else in_channels
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
            if not dense:
                style = dict(arrowstyle="->", color="C3", connectionstyle="arc3,rad=-0.5")
                ax.annotate("", (2 * i - 0.15, 0.28), (2 * i - 1.85, 0.28), arrowprops=style)
        total = in_channels + num_convs * growth_rate
        title = f"dense block: concatenate, {in_channels} + {num_convs}x{growth_rate} = {total} channels out"
        ax.set_title(title if dense else "residual blocks: add")
        ax.set(xlim=(-0.5, 2 * num_convs + 0.5), ylim=ylim, aspect="equal")
        ax.axis("off")
    return arrows


def densenet_channels_view(
    num_channels: int = 64, growth_rate: int = 32, num_convs: int = 4, resnet18_params: int | None = None
) -> str:
    """What the channel explorer prints for ``DenseNet(num_channels, growth_rate, (num_convs,) * 4)``:
    the channels after every stage and the parameter count (beside ResNet-18's, if given)."""
    from d2l_ext.densenet import densenet_channels
    from d2l_ext.measure import densenet_num_params

    arch = (num_convs,) * 4
    channels = " -> ".join(str(c) for _, c in densenet_channels(num_channels, growth_rate, arch))
    params = f"parameters: {densenet_num_params(num_channels, growth_rate, arch):,}"
    if resnet18_params is not None:
        params += f" (ResNet-18: {resnet18_params:,})"
    text = f"channels: {channels}\n{params}"
    print(text)
    return text


def densenet_explorer(resnet18_params: int | None = None):
    """Sliders for the stem's width, the growth rate and the conv blocks per dense block, showing
    `densenet_channels_view`; computed once at once, so that the cell also runs headless."""
    import ipywidgets as widgets

    def slider(low, high, step, value):
        return widgets.IntSlider(value=value, min=low, max=high, step=step, continuous_update=False)

    explorer = widgets.interactive(
        densenet_channels_view,
        num_channels=slider(16, 128, 16, 64),
        growth_rate=slider(8, 64, 8, 32),
        num_convs=slider(1, 8, 1, 4),
        resnet18_params=widgets.fixed(resnet18_params),
    )
    explorer.update()
    return explorer


def architecture_table(runs: dict):
    """One row per trained model: parameters, forward MFLOPs per image, training images/s, val acc.

    ``runs`` maps a name to ``(net, trainer, cfg)``: a trained model, its `d2l_ext.Trainer` and its
    `d2l_ext.Experiment`, whose data settings give the training resolution. FLOPs are counted on
    one (1, 1, size, size) image in eval mode (`d2l_ext.measure.count_flops`); each model keeps its
    own mode. Returns a pandas DataFrame indexed by name.
    """
    import pandas as pd
    import torch

    from d2l_ext.measure import count_flops, num_params

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


def reference_architecture_table(
    models: Mapping[str, str], setting: str = "demo", path: Path = REFERENCE_RESULTS
):
    """The committed benchmark's rows (see `reference_results`) as columns of `architecture_table`.

    ``models`` maps a display name to the benchmark's model name (e.g. ``{"ResNet": "resnet"}``);
    ``setting`` is "demo" (the demo preset) or "book". Returns a DataFrame indexed by display name with
    the columns "MFLOPs/image", "images/s", "epochs" and "val acc" (the benchmark's test accuracy,
    on the same 10,000 test images that the notebooks validate on).
    """
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"No reference results at {path}; run `make bench` to measure them.")
    rows = {r["model"]: r for r in json.loads(path.read_text())["rows"] if r["setting"] == setting}
    missing = sorted(set(models.values()) - set(rows))
    if missing:
        known = sorted(rows)
        raise KeyError(f"The reference results have no {setting!r} rows for {missing}; known: {known}.")
    columns = {"MFLOPs/image": "forward_mflops_per_image", "images/s": "images_per_s", "epochs": "epochs"}
    columns["val acc"] = "test_acc"
    table = {name: {c: rows[key][k] for c, k in columns.items()} for name, key in models.items()}
    return pd.DataFrame(table).T


def relative_to(table, reference: str = "ResNet"):
    """``table`` (from `architecture_table` or `reference_architecture_table`) with two more columns.

    "MFLOP/s vs {reference}": the FLOPs each model computes per second of training (images/s times
    MFLOPs/image) over those of the row ``reference``; "acc vs {reference}": its validation accuracy
    minus the reference's.
    """
    if reference not in table.index:
        raise KeyError(f"No row {reference!r} to compare with; the rows are {list(table.index)}.")
    out = table.copy()
    rate = table["images/s"] * table["MFLOPs/image"]
    out[f"MFLOP/s vs {reference}"] = rate / rate[reference]
    out[f"acc vs {reference}"] = table["val acc"] - table.loc[reference, "val acc"]
    return out


def format_architecture_table(table):
    """``table`` (from `architecture_table`, `reference_architecture_table` or `relative_to`) styled
    for display: thousands, one decimal, percentages, ratios with two decimals."""
    formats = {"parameters": "{:,.0f}", "MFLOPs/image": "{:.1f}", "images/s": "{:,.0f}", "epochs": "{:.2f}"}
    formats |= {"val acc": "{:.1%}"}
    formats |= {c: "{:.2f}" for c in table.columns if c.startswith("MFLOP/s vs")}
    formats |= {c: "{:+.1%}" for c in table.columns if c.startswith("acc vs")}
    return table.style.format({c: f for c, f in formats.items() if c in table.columns})


__all__ += [
    "architecture_table",
    "densenet_channels_view",
    "densenet_explorer",
    "format_architecture_table",
    "plot_connectivity",
    "reference_architecture_table",
    "relative_to",
]

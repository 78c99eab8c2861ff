"""Measurements and figures of notebook 02 (ResNet)."""

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.measure import eval_mode

__all__ = [
    "branch_ratios", "final_loss", "init_grad_rms", "plot_function_fits",
    "plot_grad_rms", "plot_step_losses", "residual_parts", "shortcut_gradient",
]  # fmt: skip


def init_grad_rms(Net, num_residuals: int, widths, X, y, seed: int = 0, **kwargs) -> list[float]:
    """RMS of the loss gradient of each convolution's weight, input side first, in the first training
    step on ``X``, ``y`` of a fresh ``Net`` of ``num_residuals`` blocks per stage of ``widths``, seeded
    with ``seed`` without touching the caller's random state.

    The RMS, unlike the norm, lets layers of any size compare; without the 1x1 shortcuts, a ResNet and
    its PlainNet give lists of the same length."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net(tuple((num_residuals, w) for w in widths), **kwargs)
        net.apply_init([X[:2]], d2l.init_cnn)
    net.loss(net(X), y).backward()
    grads = [m.weight.grad for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return [(g.norm() / g.numel() ** 0.5).item() for g in grads]


def _residual_kind(m: nn.Module) -> str | None:
    # By class name, not isinstance: a notebook's own Residual (the one the exporter copies into
    # d2l_ext.resnet) is another class object with the same layers. PlainBlock has no shortcut.
    names = [c.__name__ for c in type(m).__mro__]
    if "PlainBlock" not in names:
        return next((n for n in names if n in ("PreActResidual", "Residual")), None)


def residual_parts(blk: nn.Module, X: torch.Tensor):
    """``(g, s, join)`` of a `Residual` or `PreActResidual` block on ``X``: the branch's output, the
    shortcut's, and the function with ``join(g, s) == blk(X)`` (ReLU(g + s), or g + s)."""
    kind = _residual_kind(blk)
    if kind is None:
        raise TypeError(
            f"residual_parts takes a Residual or PreActResidual block, not a {type(blk).__name__}."
        )
    if kind == "PreActResidual":
        return blk.conv2(F.relu(blk.bn2(blk.conv1(F.relu(blk.bn1(X)))))), X, torch.add
    g = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(X)))))
    return g, X if blk.conv3 is None else blk.conv3(X), lambda g, s: F.relu(g + s)


def shortcut_gradient(blk: nn.Module, X: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The part of dL/dX that reaches the input ``X`` of a residual block through its shortcut, given
    ``grad_out`` = dL/d blk(X): dL/dX minus the part through the branch."""
    X = X.detach().requires_grad_()
    g, s, join = residual_parts(blk, X)
    (full,) = torch.autograd.grad(join(g, s), X, grad_out, retain_graph=True)
    (through_branch,) = torch.autograd.grad(join(g, s.detach()), X, grad_out)
    return full - through_branch


def branch_ratios(net: nn.Module, X: torch.Tensor) -> list[float]:
    """||g(x)|| / ||s(x)|| (branch against shortcut) of every residual block of ``net``, input side
    first, on the minibatch ``X`` in eval mode."""
    blocks = [m for m in net.modules() if _residual_kind(m)]
    if not blocks:
        raise ValueError(f"{type(net).__name__} has no Residual or PreActResidual block to measure.")
    ratios = []

    def measure(blk, inputs, output):
        g, s, _ = residual_parts(blk, inputs[0])
        ratios.append((g.norm() / s.norm()).item())

    hooks = [blk.register_forward_hook(measure) for blk in blocks]
    try:
        with torch.no_grad(), eval_mode(net):
            net(X.to(next(net.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return ratios


def final_loss(losses: list[float], frac: float = 0.1) -> float:
    """Mean of the last ``frac`` of ``losses`` (at least the last one): where a run ended, less noisy."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac is the fraction of the steps to average, in (0, 1]; got {frac!r}.")
    if len(losses) == 0:
        raise ValueError("final_loss got no losses; did the run take any steps (max_steps > 0)?")
    k = max(1, int(frac * len(losses)))
    return sum(losses[-k:]) / k


def plot_function_fits(x, f_star, fits: dict, distances: dict):
    """``f_star`` and ``fits`` (a label -> the closest member of a class) over ``x`` (left), and the
    ``distances`` of each family's classes from ``f_star`` (right). Returns the axes."""
    _, axes = d2l.plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(x, f_star, "k-", lw=3, alpha=0.4, label="$f^*$")
    for label, fit in fits.items():
        axes[0].plot(x, fit, "--", label=label)
    axes[0].set(xlabel="$x$", title="$f^*$ and the closest member of a class")
    axes[0].legend(fontsize=8)
    for (label, d), marker in zip(distances.items(), ("o-", "s-", "^-", "v-")):
        axes[1].plot(range(1, len(d) + 1), d, marker, label=label)
    axes[1].set(
        xlabel="class $i$", ylabel="RMS distance from $f^*$", yscale="log", title="how close each class gets"
    )
    axes[1].legend()
    return axes


def plot_step_losses(losses: dict, num_points: int = 25):
    """Training loss per step, ``losses[name, layers]``, averaged over a sliding window of
    ``len / num_points`` steps, one panel per network. Returns the axes."""
    names = list(dict.fromkeys(name for name, _ in losses))
    _, axes = d2l.plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), sharey=True, squeeze=False)
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


def plot_grad_rms(norms: dict, title: str = ""):
    """One line per network: its `init_grad_rms`, input side first (log scale). Returns the axes."""
    _, ax = d2l.plt.subplots(figsize=(6, 3.2))
    for name, g in norms.items():
        ax.plot(range(1, len(g) + 1), g, ".-", label=name)
    ax.set(yscale="log", xlabel="convolution (input side first)", ylabel="gradient RMS at init", title=title)
    ax.legend()
    return ax

"""Measurements and figures of notebook 01 (batch and layer normalization): hand-written, tested
(tests/test_batch_norm.py), kept apart from the lesson's code in `d2l_ext.batch_norm`.
"""

from __future__ import annotations

import ipywidgets as widgets
import torch
from d2l import torch as d2l
from torch import nn

from d2l_ext.batch_norm import BatchNorm, BNLeNet
from d2l_ext.data import FashionMNIST
from d2l_ext.measure import eval_mode, has_lazy, train_mode
from d2l_ext.presets import experiment
from d2l_ext.runs import fit, measure_once

__all__ = [
    "accuracy_with",
    "batch_noise_explorer",
    "batch_noise_figure",
    "batch_stat_noise",
    "bn_inputs",
    "bn_layers",
    "companion_outputs",
    "exact_bn_statistics",
    "ghost_batch_runs",
    "ghost_batches",
    "GhostBatchNorm",
    "sigmoid_inputs",
]


def sigmoid_inputs(model: nn.Module) -> dict[str, nn.Module]:
    """The module that feeds each ``nn.Sigmoid`` in ``model.net``, named after the layer it follows."""
    layers, names = {}, iter(["conv 1", "conv 2", "fc 1", "fc 2", "fc 3"])
    for i, layer in enumerate(model.net):
        if isinstance(layer, nn.Sigmoid):
            layers[next(names)] = model.net[i - 1]
    return layers


@torch.no_grad()
def companion_outputs(
    model: nn.Module,
    x: torch.Tensor,
    pool: torch.Tensor,
    batch_size: int,
    num_batches: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """Softmax outputs for the example ``x`` in training mode, each time in a batch with
    ``batch_size - 1`` random companions from ``pool``. The model's state and every submodule's
    mode are left as they were, also when a forward pass raises.

    Shapes: x (C, H, W), pool (M, C, H, W) -> (num_batches, num_classes).
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN's running estimates move
    gen, outputs = torch.Generator().manual_seed(seed), []
    with train_mode(model):
        try:
            for _ in range(num_batches):
                companions = pool[torch.randperm(len(pool), generator=gen)[: batch_size - 1]]
                outputs.append(model(torch.cat([x[None], companions]))[0].softmax(-1))
        finally:
            model.load_state_dict(state)
    return torch.stack(outputs)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (PyTorch's and ours), in the order they were registered."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm)]


@torch.no_grad()
def bn_inputs(model: nn.Module, X: torch.Tensor) -> list[torch.Tensor]:
    """The input of every batch-norm layer of ``model`` for the examples ``X``, in eval mode."""
    inputs = []
    handles = [m.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for m in bn_layers(model)]
    try:
        with eval_mode(model):
            model(X)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def batch_stat_noise(
    features: torch.Tensor, batch_size: int, num_batches: int = 200, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far minibatch statistics fall from those of all of ``features``.

    For ``num_batches`` random batches of ``batch_size`` examples (without replacement), per unit
    (feature or channel): the error of the batch mean in population standard deviations,
    ``(mu_B - mu) / sigma``, and the ratio of the batch's biased variance to the population's.

    Shapes: features (N, C) or (N, C, H, W) -> two tensors (num_batches, C).
    """
    if not 1 <= batch_size <= len(features):
        raise ValueError(f"batch_size must be between 1 and {len(features)}, got {batch_size}.")
    dims = (0,) if features.dim() == 2 else (0, 2, 3)
    mu, var = features.mean(dim=dims), features.var(dim=dims, unbiased=False)
    gen = torch.Generator().manual_seed(seed)
    mean_err, var_ratio = [], []
    for _ in range(num_batches):
        batch = features[torch.randperm(len(features), generator=gen)[:batch_size]]
        mean_err.append((batch.mean(dim=dims) - mu) / var.sqrt())
        var_ratio.append(batch.var(dim=dims, unbiased=False) / var)
    return torch.stack(mean_err), torch.stack(var_ratio)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early."""


def _running_stats(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BN layer's running mean and variance: PyTorch's names, or our BatchNorm's."""
    if hasattr(bn, "running_mean"):
        return bn.running_mean, bn.running_var
    return bn.moving_mean, bn.moving_var


def _moments(X: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, sum and sum of squares per channel (float64), over the batch and any positions."""
    dims = (0,) if X.dim() == 2 else (0, 2, 3)
    X = X.double()
    return X.numel() // X.shape[1], X.sum(dim=dims), (X * X).sum(dim=dims)


def _input_moments(model: nn.Module, bn: nn.Module, loader) -> list:
    """`_moments` of the input of ``bn`` over all of ``loader``; each pass stops at ``bn``."""
    totals = [0, 0.0, 0.0]  # count, sum, sum of squares, accumulated batch by batch

    def measure(module, args):
        # Accumulate rather than keep each batch's moments: keeping them held every batch's
        # activations alive (several GB over the training set).
        for i, t in enumerate(_moments(args[0])):
            totals[i] = totals[i] + t
        raise _StopForward  # the layers after this one are not needed yet

    handle = bn.register_forward_pre_hook(measure)
    try:
        for X, _ in loader:
            try:
                model(X)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return totals


def exact_bn_statistics(
    model: nn.Module, loader, *, recompute: bool | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Replace every BN layer's running estimates with the exact mean and variance of its input
    over all of ``loader``, layer by layer in eval mode; returns them as (mean, var) per layer.

    The variance is stored in PyTorch's convention for ``running_var``: the unbiased one of all n
    values per channel (n = N, or N * H * W), n / (n - 1) times the biased one. That factor is
    1 + 1/(n - 1): for a fully connected layer on the 60,000 training images, 1 + 1.7e-5, about 140
    times float32's machine epsilon, so the two conventions differ measurably. If a pass fails or is
    interrupted, every running estimate is put back as it was, and every mode.

    A pass per BN layer over the training set takes seconds on a laptop, so, like a training, the
    result is kept in the run cache (`d2l_ext.runs.measure_once`), keyed by the model's code, every
    weight and buffer, and the loader's data and order: the same call on the same weights replays
    it, leaves the model exactly as computing would, and says so in one line. ``recompute=True``
    (or ``D2L_EXT_RETRAIN=1``) computes afresh.

    Shapes: each mean and var (C,), float32, for a layer of C features or channels.
    """
    return measure_once(_exact_bn_statistics, model, loader, name="exact_bn_statistics", recompute=recompute)


@torch.no_grad()
def _exact_bn_statistics(model: nn.Module, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`exact_bn_statistics`, computed."""
    layers = bn_layers(model)
    before = [tuple(t.clone() for t in _running_stats(bn)) for bn in layers]
    stats = []
    with eval_mode(model):
        try:
            for bn in layers:
                n, s1, s2 = _input_moments(model, bn, loader)
                mean, var = s1 / n, (s2 / n - (s1 / n) ** 2) * (n / (n - 1))  # unbiased
                for running, exact in zip(_running_stats(bn), (mean, var)):
                    running.copy_(exact.view_as(running))
                stats.append((mean.float(), var.float()))
        except BaseException:
            # Half the layers on exact statistics and half on running ones would be neither.
            for bn, saved in zip(layers, before):
                for running, old in zip(_running_stats(bn), saved):
                    running.copy_(old)
            raise
    return stats


class GhostBatchNorm(nn.Module):
    """A PyTorch BN layer whose training-mode statistics come from groups of ``size`` examples.

    "Ghost batches" (Hoffer, Hubara & Soudry, 2017): the minibatch of N examples is cut into N / size
    consecutive groups, and each group is normalized with its own mean and biased variance, as a
    minibatch of ``size`` would be, while the optimizer still takes one step on all N. Changing
    ``size`` changes only the noise of BN's statistics. The running estimates are updated once per
    step, with ``bn.momentum``, by the average over the groups of their means and unbiased variances.
    Eval mode is ``bn``'s. Shapes: (N, C) or (N, C, H, W), N a multiple of ``size``; output the same.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, size: int):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2 (a group of one has no variance), got {size!r}.")
        self.bn, self.size = bn, size
        self.train(bn.training)  # a new module trains by default; keep the mode of the layer it wraps

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(X)
        N, C, rest = X.shape[0], X.shape[1], X.shape[2:]
        if N % self.size:
            raise ValueError(
                f"a batch of {N} examples does not split into ghost batches of {self.size}: use a batch "
                "size that is a multiple of it (and a training set that is a multiple of the batch size)."
            )
        G = N // self.size
        # (N, C, ...) -> (size, G * C, ...): each (group, channel) pair becomes a channel of its own.
        Xg = X.reshape(G, self.size, C, *rest).transpose(0, 1).reshape(self.size, G * C, *rest)
        bn = self.bn
        Y = nn.functional.batch_norm(
            Xg, None, None, bn.weight.repeat(G), bn.bias.repeat(G), True, 0.0, bn.eps
        )
        with torch.no_grad():
            dims = [0] + list(range(2, Xg.dim()))
            mean = Xg.mean(dim=dims).view(G, C).mean(0)
            var = Xg.var(dim=dims).view(G, C).mean(0)  # unbiased, as PyTorch keeps it
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
            bn.running_var.lerp_(var.to(bn.running_var.dtype), bn.momentum)
            bn.num_batches_tracked += 1
        return Y.reshape(self.size, G, C, *rest).transpose(0, 1).reshape(X.shape)


def ghost_batches(model: nn.Module, size: int) -> nn.Module:
    """``model`` with every PyTorch BN layer of ``model.net`` wrapped in a `GhostBatchNorm` of ``size``."""
    layers = [i for i, m in enumerate(model.net) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or any(has_lazy(model.net[i]) for i in layers):
        raise ValueError(
            "ghost_batches needs a model.net with materialized PyTorch BN layers: call the model "
            "once on a batch (model(X[:2])) before wrapping them."
        )
    for i in layers:
        model.net[i] = GhostBatchNorm(model.net[i], size)
    return model


def batch_noise_figure(features: dict, batch_size: int, num_batches: int = 200):
    """Histograms, over ``num_batches`` random batches of ``batch_size`` and all units, of how far
    the batch statistics of each layer's ``features`` fall from the true ones (`batch_stat_noise`):
    the mean's error in standard deviations (left), the variance's ratio (right).

    ``features`` maps a layer's name to its inputs, (N, C) or (N, C, H, W). Returns the figure.
    """
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

    def show(batch_size):
        batch_noise_figure(features, batch_size, num_batches)
        d2l.plt.show()

    slider = widgets.SelectionSlider(options=sizes, value=value, continuous_update=False)
    explorer = widgets.interactive(show, batch_size=slider)
    explorer.update()
    return explorer


def accuracy_with(net, loader, batch_statistics=False):
    """Accuracy in eval mode, or in training mode (each batch normalized with its own statistics)."""
    with (train_mode if batch_statistics else eval_mode)(net), torch.no_grad():
        return sum((net(X).argmax(1) == y).sum().item() for X, y in loader) / len(loader.targets)


def ghost_batch_runs():
    """BN-LeNet trained (or replayed) under the ``bn_ghost`` experiment once per ghost-batch size b
    of the experiment, with BN's statistics over b examples, on a small class-balanced training
    subset (so that it overfits). Per b: its accuracy in eval mode on that subset and on the test set."""
    cfg = experiment("bn_ghost")
    data = FashionMNIST(**cfg.data | {"train_subset": cfg.extra["train_subset"]})  # small: it overfits
    ghost = {}
    for b in cfg.extra["sizes"]:
        model = BNLeNet(**cfg.model)
        model(torch.zeros(2, 1, 28, 28))  # materialize the Lazy layers before wrapping them
        trainer = fit(cfg, ghost_batches(model, b), data, plot=False)
        ghost[b] = {
            "train": accuracy_with(model.net, data.train_dataloader()),
            "test": accuracy_with(model.net, data.val_dataloader()),
        }
        print(f"BN statistics over {b:3d} examples:", trainer.summary())
    return ghost

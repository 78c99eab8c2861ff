"""Measurements and figures of notebook 01 (batch and layer normalization)."""

import ipywidgets as widgets
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.batch_norm import BatchNorm, BNLeNet
from d2l_ext.data import FashionMNIST
from d2l_ext.measure import eval_mode, has_lazy, train_mode
from d2l_ext.presets import experiment
from d2l_ext.runs import fit, measure_once

__all__ = ["bn_layers", "bn_inputs", "sigmoid_inputs", "batch_stat_noise", "batch_noise_explorer"]
__all__ += ["companion_outputs", "accuracy_with", "exact_bn_statistics"]
__all__ += ["GhostBatchNorm", "ghost_batches", "ghost_batch_runs"]


def sigmoid_inputs(model: nn.Module) -> dict[str, nn.Module]:
    """The module that feeds each ``nn.Sigmoid`` in ``model.net``, named after the layer it follows."""
    names = iter(["conv 1", "conv 2", "fc 1", "fc 2", "fc 3"])
    return {next(names): model.net[i - 1] for i, m in enumerate(model.net) if isinstance(m, nn.Sigmoid)}


@torch.no_grad()
def companion_outputs(model, x, pool, batch_size: int, num_batches: int = 100, seed: int = 0) -> torch.Tensor:
    """Softmax outputs (num_batches, classes) for the example ``x`` in training mode, each time in a
    batch with ``batch_size - 1`` random companions from ``pool``; the model is left as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN's running estimates move
    gen, outputs = torch.Generator().manual_seed(seed), []
    try:
        with train_mode(model):
            for _ in range(num_batches):
                companions = pool[torch.randperm(len(pool), generator=gen)[: batch_size - 1]]
                outputs.append(model(torch.cat([x[None], companions]))[0].softmax(-1))
    finally:
        model.load_state_dict(state)
    return torch.stack(outputs)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (PyTorch's and ours), in registration order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm)]


class _Stop(Exception):
    """Ends a forward pass at the layer whose input it carries."""


def _input_of(model: nn.Module, layer: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` when ``model`` runs on ``X``; the layers after it do not run."""

    def stop(module, args):
        raise _Stop(args[0])

    handle = layer.register_forward_pre_hook(stop)
    try:
        model(X)
    except _Stop as stopped:
        return stopped.args[0]
    finally:
        handle.remove()


@torch.no_grad()
def bn_inputs(model: nn.Module, X: torch.Tensor) -> list[torch.Tensor]:
    """The input of every batch-norm layer of ``model`` for the examples ``X``, in eval mode."""
    with eval_mode(model):
        return [_input_of(model, bn, X) for bn in bn_layers(model)]


def batch_stat_noise(features: torch.Tensor, batch_size: int, num_batches: int = 200, seed: int = 0):
    """How far the statistics of random batches of ``features`` (N, C, ...) fall from the whole's:
    per batch and unit, two (num_batches, C) tensors, the batch mean's error in standard deviations,
    ``(mu_B - mu) / sigma``, and the ratio of the batch's biased variance to the population's."""
    if not 1 <= batch_size <= len(features):
        raise ValueError(f"batch_size must be between 1 and {len(features)}, got {batch_size}.")
    dims = [0, *range(2, features.dim())]
    mu, var = features.mean(dim=dims), features.var(dim=dims, unbiased=False)
    gen = torch.Generator().manual_seed(seed)
    mean_err, var_ratio = [], []
    for _ in range(num_batches):
        batch = features[torch.randperm(len(features), generator=gen)[:batch_size]]
        mean_err.append((batch.mean(dim=dims) - mu) / var.sqrt())
        var_ratio.append(batch.var(dim=dims, unbiased=False) / var)
    return torch.stack(mean_err), torch.stack(var_ratio)


def exact_bn_statistics(model: nn.Module, loader, *, recompute: bool | None = None) -> list[tuple]:
    """Set every BN layer's running estimates to the exact mean and unbiased variance (PyTorch's) of
    its input over all of ``loader``, layer by layer in eval mode; (mean, var) per layer, each (C,)
    float32. A failed pass puts every estimate back. Kept in the run cache like a training
    (`d2l_ext.runs.measure_once`); ``recompute=True`` computes afresh."""
    return measure_once(_exact_bn_statistics, model, loader, name="exact_bn_statistics", recompute=recompute)


def _running_stats(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    # Our BatchNorm keeps the book's names for its running estimates.
    return (bn.moving_mean, bn.moving_var) if isinstance(bn, BatchNorm) else (bn.running_mean, bn.running_var)


@torch.no_grad()
def _exact_bn_statistics(model: nn.Module, loader) -> list[tuple]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stats = []
    try:
        with eval_mode(model):
            for bn in bn_layers(model):  # each layer's input needs the layers before it on theirs
                n, s1, s2 = 0, 0.0, 0.0  # summed per channel in float64, batch by batch
                for X, _ in loader:
                    H = _input_of(model, bn, X).double()
                    dims = [0, *range(2, H.dim())]
                    n, s1, s2 = n + H.numel() // H.shape[1], s1 + H.sum(dims), s2 + (H * H).sum(dims)
                mean, var = s1 / n, (s2 / n - (s1 / n) ** 2) * (n / (n - 1))
                for running, exact in zip(_running_stats(bn), (mean, var)):
                    running.copy_(exact.view_as(running))
                stats.append((mean.float(), var.float()))
    except BaseException:
        model.load_state_dict(state)  # half the layers on exact statistics would be neither
        raise
    return stats


class GhostBatchNorm(nn.Module):
    """PyTorch's BN layer ``bn`` with training-mode statistics over groups of ``size`` examples, the
    "ghost batches" of Hoffer et al. (2017): the running estimates move once per step, by the groups'
    average mean and unbiased variance. Eval mode is ``bn``'s. N must be a multiple of ``size``."""

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
        if len(X) % self.size:
            raise ValueError(
                f"a batch of {len(X)} examples does not split into ghost batches of {self.size}: use a "
                "batch size (and a training set size) that is a multiple of it."
            )
        bn, G, C, rest = self.bn, len(X) // self.size, X.shape[1], X.shape[2:]
        # (N, C, ...) -> (size, G * C, ...): each (group, channel) pair becomes a channel of its own,
        # whose estimates move as PyTorch moves them; their average is the layer's new estimate.
        Xg = X.reshape(G, self.size, C, *rest).transpose(0, 1).reshape(self.size, G * C, *rest)
        mean, var = bn.running_mean.repeat(G), bn.running_var.repeat(G)
        Y = F.batch_norm(Xg, mean, var, bn.weight.repeat(G), bn.bias.repeat(G), True, bn.momentum, bn.eps)
        with torch.no_grad():
            bn.running_mean.copy_(mean.view(G, C).mean(0))
            bn.running_var.copy_(var.view(G, C).mean(0))
            bn.num_batches_tracked += 1
        return Y.reshape(self.size, G, C, *rest).transpose(0, 1).reshape(X.shape)


def ghost_batches(model: nn.Module, size: int) -> nn.Module:
    """``model`` with every PyTorch BN layer of ``model.net`` wrapped in a `GhostBatchNorm`."""
    layers = [i for i, m in enumerate(model.net) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or any(has_lazy(model.net[i]) for i in layers):
        raise ValueError(
            "ghost_batches needs a model.net with materialized PyTorch BN layers: call the model "
            "once on a batch (model(X[:2])) before wrapping them."
        )
    for i in layers:
        model.net[i] = GhostBatchNorm(model.net[i], size)
    return model


def batch_noise_explorer(features: dict, sizes: list[int], value: int = 8, num_batches: int = 200):
    """A slider over the batch ``sizes`` drawing, for each layer's ``features``, histograms of
    `batch_stat_noise`: the mean's error (left), the variance's ratio (right). Drawn once at once,
    so that the figure shows also where no browser runs."""

    def show(batch_size):
        _, axes = d2l.plt.subplots(1, 2, figsize=(9, 2.8))
        for name, f in features.items():
            err, ratio = batch_stat_noise(f, batch_size, num_batches)
            kw = dict(bins=60, alpha=0.6, density=True, label=name)
            axes[0].hist(err.flatten().clamp(-3, 3), range=(-3, 3), **kw)
            axes[1].hist(ratio.flatten().clamp(0, 3), range=(0, 3), **kw)
        axes[0].set(
            xlabel="(batch mean - mean) / std", title=f"batch size {batch_size}: the mean (0 is right)"
        )
        axes[1].set(xlabel="batch var / var", title="the variance (1 is right; 0: output is beta)")
        axes[1].legend(fontsize=8)
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

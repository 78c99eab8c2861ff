"""Measuring tools shared by the notebooks: modes, parameter and FLOP counts, shapes, memory, time.

Hand-written and tested (tests/test_measure.py); the lecture's own layers and models live in the
generated topic modules. Each tool is defined once here, and every tool that needs a model in eval
mode uses `eval_mode`, which puts every submodule back in its own mode afterwards, also when the
measurement fails or is interrupted (Ctrl-C in a notebook).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_flops",
    "eval_mode",
    "has_lazy",
    "num_params",
    "saved_activation_bytes",
    "stage_shapes",
    "time_forward",
    "train_mode",
]


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    # Each submodule's own flag is restored, not the parent's: a model whose BN layers were frozen
    # in eval mode while the rest trains comes back exactly as it was.
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, training_before in modes:
            m.training = training_before


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``with eval_mode(net): ...`` runs ``net`` in eval mode, then restores every submodule's mode.

    The mode comes back also when the block raises (a bad input, Ctrl-C).
    """
    return _mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Like `eval_mode`, for training mode (BN uses and updates batch statistics)."""
    return _mode(model, True)


def has_lazy(model: nn.Module) -> bool:
    """True while some parameter of ``model`` is still uninitialized (a Lazy module before its first call)."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


def _materialize(net: nn.Module, *inputs: torch.Tensor) -> None:
    """Give Lazy layers their shapes with one call in eval mode (BN's statistics stay untouched)."""
    if has_lazy(net):
        with eval_mode(net), torch.no_grad():
            net(*inputs)


def num_params(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Number of parameters of ``net``; ``inputs`` materialize Lazy layers first, if it has any."""
    if has_lazy(net):
        if not inputs:
            raise ValueError(
                f"{type(net).__name__} has Lazy layers without shapes yet; pass an example input, "
                "e.g. num_params(net, torch.zeros(1, 1, 28, 28))."
            )
        _materialize(net, *inputs)
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of ``net(*inputs)`` as ``torch.utils.flop_counter`` counts them.

    A multiply-add is 2 FLOPs; only convolutions and matrix products count, not BN, ReLU or pooling.
    Runs in eval mode without autograd, so BN's running statistics are left untouched.
    """
    with eval_mode(net), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*inputs)
    return counter.get_total_flops()


def stage_shapes(net: nn.Module, X: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every top-level stage of ``net.net`` (stem, stages, head) for the input ``X``.

    In eval mode, so that BN accepts a single image and its running statistics stay untouched.
    """
    shapes = {}
    with eval_mode(net), torch.no_grad():
        for name, layer in net.net.named_children():
            X = layer(X)
            shapes[name] = tuple(X.shape)
    return shapes


def saved_activation_bytes(net: nn.Module, X: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward pass of ``net`` on ``X``.

    Counts each storage once and leaves out the parameters and buffers (BN's running statistics),
    which the model keeps anyway; ``net`` is left in its previous mode.
    """
    _materialize(net, X)
    state = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with train_mode(net), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        Y = net(X)  # keeps the graph, and with it every saved tensor, alive while we count
        del Y
    return sum(saved.values())


def time_forward(net: nn.Module, X: torch.Tensor, repeat: int = 10) -> float:
    """Wall time in seconds of ``net(X)`` without autograd: the fastest of ``repeat`` calls after a warm-up.

    The minimum, not the mean: other programs on the machine can only add time.
    """
    times = []
    with torch.no_grad():
        net(X)
        for _ in range(repeat):
            start = time.perf_counter()
            net(X)
            times.append(time.perf_counter() - start)
    return min(times)


# Topic-specific measuring tools follow, one section per notebook, in the lecture's order.

# -- 01 · batch and layer normalization ----------------------------------------------------------


class ActivationRecorder:
    """Per-unit mean and standard deviation of some layers' outputs, recorded at every training step.

    A unit is a channel of a convolution's output (statistics over batch, height and width) or a
    feature of a fully connected layer's (over the batch). Only training-mode passes on at least
    ``min_batch`` examples count, which skips the Trainer's initializing pass on two examples.
    Use it as a context, ``with ActivationRecorder(layers) as recorder: trainer.fit(...)``, so that
    its hooks are removed even when the training fails or is interrupted.

    Args:
        layers: a name for each module whose output is recorded.
    """

    def __init__(self, layers: dict[str, nn.Module], min_batch: int = 8):
        self.min_batch = min_batch
        self.means: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.stds: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in layers.items()]

    def _hook(self, name):
        def hook(module, inputs, Y):
            if module.training and len(Y) >= self.min_batch:
                Y = Y.detach().float()
                dims = (0,) if Y.dim() == 2 else (0, 2, 3)
                self.means[name].append(Y.mean(dim=dims))
                self.stds[name].append(Y.std(dim=dims))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> ActivationRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def curves(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For each layer, (means, stds), each of shape (steps, units)."""
        return {name: (torch.stack(self.means[name]), torch.stack(self.stds[name])) for name in self.means}


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
    from d2l_ext.batch_norm import BatchNorm  # here: importing measure need not import d2l

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


@torch.no_grad()
def exact_bn_statistics(model: nn.Module, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Replace every BN layer's running estimates with the exact mean and variance of its input
    over all of ``loader``, layer by layer in eval mode; returns them as (mean, var) per layer.

    The variance is the biased one of all N (or N * H * W) values; with that many values the
    unbiased one differs by a factor 1 + 1/(n - 1), below float32 resolution here. If a pass
    fails or is interrupted, every running estimate is put back as it was, and every mode.
    """
    layers = bn_layers(model)
    before = [tuple(t.clone() for t in _running_stats(bn)) for bn in layers]
    stats = []
    with eval_mode(model):
        try:
            for bn in layers:
                n, s1, s2 = _input_moments(model, bn, loader)
                mean, var = s1 / n, s2 / n - (s1 / n) ** 2
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


__all__ += [
    "ActivationRecorder",
    "batch_stat_noise",
    "bn_inputs",
    "bn_layers",
    "companion_outputs",
    "exact_bn_statistics",
    "sigmoid_inputs",
]

# -- 02 · ResNet ----------------------------------------------------------------------------------


def conv_grad_norms(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Norm of the loss gradient w.r.t. the weight of every convolution of ``net`` except the 1x1
    ones, input side first, for one minibatch ``X`` (N, C, H, W) with labels ``y`` (N,).

    The 1x1 (shortcut) convolutions are left out, so that a ResNet and its PlainNet give lists of
    the same length. Computed as in a training step, in training mode (BN normalizes with the
    minibatch's statistics and updates its running ones); every submodule's mode comes back
    afterwards. ``net`` needs the ``loss`` of a ``d2l.Classifier``; its ``.grad`` are overwritten.
    """
    with train_mode(net):
        net.zero_grad()
        net.loss(net(X), y).backward()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return [m.weight.grad.norm().item() for m in convs]


def init_grad_norms(
    Net: type[nn.Module],
    num_residuals: int,
    widths: tuple[int, ...],
    X: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    **kwargs,
) -> list[float]:
    """`conv_grad_norms` at initialization of ``Net(arch, **kwargs)``, with ``num_residuals`` blocks in
    each stage of ``widths`` channels, initialized as `Trainer` does (Xavier, ``d2l.init_cnn``).

    Seeded with ``seed``, in a forked random state: the caller's generator is left as it was.
    """
    from d2l import torch as d2l

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net(tuple((num_residuals, w) for w in widths), **kwargs)
        net.apply_init([X[:2]], d2l.init_cnn)
    return conv_grad_norms(net, X, y)


def final_loss(losses: list[float], frac: float = 0.1) -> float:
    """Mean of the last ``frac`` of ``losses`` (one per step, at least the last one): where a run
    ended, with less noise than its last step alone."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac is the fraction of the steps to average, in (0, 1]; got {frac!r}.")
    if len(losses) == 0:
        raise ValueError("final_loss got no losses; did the run take any steps (max_steps > 0)?")
    k = max(1, int(frac * len(losses)))
    return sum(losses[-k:]) / k


__all__ += ["conv_grad_norms", "final_loss", "init_grad_norms"]

# -- 03 · ResNeXt ---------------------------------------------------------------------------------


def conv_cost(c_i: int, c_o: int, groups: int, kernel_size: int = 3, size: int = 28) -> dict[str, int]:
    """Weights, parameters and forward FLOPs of ``nn.Conv2d(c_i, c_o, kernel_size, groups=groups)``.

    Measured on one (1, c_i, size, size) input, with padding that keeps the size. The layer lives on
    the meta device, which knows shapes but stores and computes nothing, so a large layer costs no time.
    """
    conv = nn.Conv2d(c_i, c_o, kernel_size, padding=kernel_size // 2, groups=groups, device="meta")
    X = torch.empty(1, c_i, size, size, device="meta")
    weights, flops = conv.weight.numel(), count_flops(conv, X)
    return dict(groups=groups, weights=weights, params=num_params(conv), flops=flops)


def resnext_cost(c_i: int, c_o: int, groups: int, bot_mul: float, size: int = 28) -> list[dict]:
    """Parameters and forward FLOPs of ResNet's and ResNeXt's blocks and of their 3x3 convolutions.

    One row per module, in this order: ``Residual(c_o)``, the plain 3x3 convolution c_i -> c_o, the
    grouped 3x3 convolution b -> b inside the ResNeXt block, and ``ResNeXtBlock(c_o, groups, bot_mul)``;
    each row holds ``module`` (a label), ``params``, ``flops`` and ``ratio`` (FLOPs relative to the
    plain convolution). Built on the meta device and run on one (1, c_i, size, size) input. Raises
    the block's ValueError when ``groups`` cannot split b = round(c_o * bot_mul).
    """
    from d2l_ext.resnet import Residual
    from d2l_ext.resnext import ResNeXtBlock, bottleneck_channels

    b = bottleneck_channels(c_o, groups, bot_mul)
    shortcut = c_i != c_o
    with torch.device("meta"):
        nets = {
            f"Residual({c_o}): two 3x3 convs": (Residual(c_o, use_1x1conv=shortcut), c_i),
            f"3x3 conv {c_i} -> {c_o}": (nn.Conv2d(c_i, c_o, 3, padding=1), c_i),
            f"3x3 conv {b} -> {b}, {groups} groups": (nn.Conv2d(b, b, 3, padding=1, groups=groups), b),
            f"ResNeXtBlock({c_o}, {groups}, {bot_mul})": (
                ResNeXtBlock(c_o, groups, bot_mul, use_1x1conv=shortcut),
                c_i,
            ),
        }
        X = {c: torch.empty(1, c, size, size) for c in (c_i, b)}
        rows = [
            dict(module=name, params=num_params(net, X[c]), flops=count_flops(net, X[c]))
            for name, (net, c) in nets.items()
        ]
    for row in rows:
        row["ratio"] = row["flops"] / rows[1]["flops"]
    return rows


def copy_torchvision_bottleneck(blk: nn.Module, ref: nn.Module) -> nn.Module:
    """Copy the weights and BN statistics of torchvision's ``Bottleneck`` ``ref`` into ``blk``, a
    `d2l_ext.resnext.ResNeXtBlock` of the same shape (built, or materialized by one call); returns ``blk``.

    ``blk``'s convolutions keep their own biases, which torchvision's lack (``bias=False`` before BN).
    """
    names = {n: n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")}
    if blk.conv4 is not None:
        names |= dict(conv4="downsample.0", bn4="downsample.1")
    with torch.no_grad():
        for ours_name, ref_name in names.items():
            for key, value in ref.get_submodule(ref_name).state_dict().items():
                getattr(blk.get_submodule(ours_name), key).copy_(value)
    return blk


__all__ += ["conv_cost", "copy_torchvision_bottleneck", "resnext_cost"]

# -- 04 · DenseNet --------------------------------------------------------------------------------


def densenet_num_params(
    num_channels: int = 64, growth_rate: int = 32, arch: tuple[int, ...] = (4, 4, 4, 4), **kwargs
) -> int:
    """Parameter count of ``DenseNet(num_channels, growth_rate, arch, **kwargs)`` for 1-channel images.

    The Lazy layers get their shapes from one call on the smallest image the model accepts;
    ``kwargs`` are DenseNet's other arguments (``num_classes``, ``stem_kernel``, ``stem_stride``).
    """
    # Imported when called, so that measure.py imports on its own, whatever state the generated
    # modules are in.
    from d2l_ext.densenet import DenseNet

    net = DenseNet(num_channels, growth_rate, arch, **kwargs)
    size = net.min_input()
    return num_params(net, torch.zeros(1, 1, size, size))


__all__ += ["densenet_num_params"]

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

# -- 02 · ResNet ----------------------------------------------------------------------------------

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

# Generated from notebooks/03_resnext.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""03 · ResNeXt: grouped convolutions, and what `groups` means

The definitions saved from notebooks/03_resnext.ipynb.
"""

import time

import IPython
import pandas as pd
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from d2l_ext.resnet import Residual, ResNet


def group_conv_by_split(X, weight, bias=None, groups=1, stride=1, padding=0):
    """A grouped convolution done by hand: split, convolve each slice with its own kernel, concatenate.

    Equals ``F.conv2d(X, weight, bias, stride, padding, groups=groups)``.
    Shapes: X (N, c_i, H, W), weight (c_o, c_i / groups, k, k), bias (c_o,) -> (N, c_o, H', W').
    """
    c_i, c_o = X.shape[1], weight.shape[0]
    if c_i % groups or c_o % groups or weight.shape[1] != c_i // groups:
        raise ValueError(
            f"groups={groups} must divide c_i={c_i} and c_o={c_o}, and the weight must have c_i / groups "
            f"input channels (it has {weight.shape[1]}); pick groups among the common divisors."
        )
    Xs = X.split(c_i // groups, dim=1)  # g slices of c_i/g channels: the paths' inputs
    Ws = weight.split(c_o // groups, dim=0)  # each path's own kernel, c_o/g output channels
    bs = bias.split(c_o // groups) if bias is not None else [None] * groups
    return torch.cat([F.conv2d(x, w, b, stride, padding) for x, w, b in zip(Xs, Ws, bs)], dim=1)


def count_flops(net, *inputs) -> int:
    """Forward FLOPs of ``net(*inputs)`` as ``torch.utils.flop_counter`` counts them.

    A multiply-add is 2 FLOPs; only convolutions and matrix products count, not BN, ReLU or pooling.
    Runs in eval mode without autograd, so BN's running statistics are left untouched.
    """
    was_training = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*inputs)
    net.train(was_training)
    return counter.get_total_flops()


def conv_cost(c_i: int, c_o: int, groups: int, kernel_size: int = 3, size: int = 28) -> dict:
    """Weights, parameters and forward FLOPs of ``nn.Conv2d(c_i, c_o, kernel_size, groups=groups)``.

    Measured on the meta device with a (1, c_i, size, size) input; padding keeps the size.
    """
    conv = nn.Conv2d(c_i, c_o, kernel_size, padding=kernel_size // 2, groups=groups, device="meta")
    X = torch.empty(1, c_i, size, size, device="meta")
    params = sum(p.numel() for p in conv.parameters())
    return dict(groups=groups, weights=conv.weight.numel(), params=params, flops=count_flops(conv, X))


def time_forward(net, X, repeat: int = 10) -> float:
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


def bottleneck_channels(num_channels: int, groups: int, bot_mul: float) -> int:
    """The bottleneck width b = round(num_channels * bot_mul), checked to split into ``groups`` groups."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups is the number of groups, a positive int; got {groups!r}.")
    b = int(round(num_channels * bot_mul))
    if b < 1:
        raise ValueError(
            f"bot_mul={bot_mul} leaves b = round({num_channels} * {bot_mul}) = {b} channels; "
            "use a larger bot_mul."
        )
    if b % groups:
        divisors = [d for d in range(1, b + 1) if b % d == 0]
        raise ValueError(
            f"the bottleneck has b = round({num_channels} * {bot_mul}) = {b} channels, which {groups} groups "
            f"cannot split evenly. Use groups among the divisors of {b} {divisors}, or num_channels and "
            f"bot_mul that give a multiple of {groups}."
        )
    return b


class ResNeXtBlock(nn.Module):
    """The ResNeXt block (Xie et al., 2017): 1x1 conv to b channels, 3x3 conv in g groups, 1x1 conv.

    Unlike the book's ``ResNeXtBlock``, ``groups`` is the number of groups g, as in the paper, the
    lecture's prose and torchvision: the 3x3 convolution gets ``groups=groups``, not
    ``groups=bot_channels // groups`` (which makes the argument the channels per group).

    Args:
        num_channels: output channels c_o.
        groups: number of groups g of the 3x3 convolution; it must divide b.
        bot_mul: bottleneck multiplier; the block is b = round(num_channels * bot_mul) channels wide.
        use_1x1conv: pass the shortcut through a 1x1 convolution and BN (stride ``strides``) so that
            it matches the output shape; needed when the stride or the channel count changes.
        strides: stride of the 3x3 convolution; 2 halves height and width.

    Shapes: (N, C, H, W) -> (N, num_channels, ceil(H / strides), ceil(W / strides)).
    """

    def __init__(
        self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False, strides: int = 1
    ):
        super().__init__()
        if strides != 1 and not use_1x1conv:
            raise ValueError(
                f"ResNeXtBlock({num_channels}, strides={strides}) changes the output shape; "
                "pass use_1x1conv=True so the shortcut matches."
            )
        bot_channels = bottleneck_channels(num_channels, groups, bot_mul)
        self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(bot_channels, kernel_size=3, stride=strides, padding=1, groups=groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()
        self.bn3 = nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
            self.bn4 = nn.LazyBatchNorm2d()
        else:
            self.conv4 = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        elif X.shape[1] != Y.shape[1]:
            raise ValueError(
                f"ResNeXtBlock({Y.shape[1]}, ...) got an input with {X.shape[1]} channels; the shortcut "
                "cannot add them. Pass use_1x1conv=True so the shortcut matches."
            )
        return F.relu(Y + X)


def copy_torchvision_bottleneck(blk, ref):
    """Copy the weights of torchvision's ``Bottleneck`` ``ref`` into ``blk`` (a ResNeXtBlock).

    Our convolutions keep their biases; torchvision's have none (``bias=False`` before BN).
    """
    names = dict(conv4="downsample.0", bn4="downsample.1") if blk.conv4 is not None else {}
    names |= {n: n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")}
    with torch.no_grad():
        for ours_name, ref_name in names.items():
            for key, value in ref.get_submodule(ref_name).state_dict().items():
                getattr(blk.get_submodule(ours_name), key).copy_(value)
    return blk


def resnext_cost(c_i: int, c_o: int, groups: int, bot_mul: float, size: int = 28) -> pd.DataFrame:
    """Parameters and forward FLOPs of ResNet's and ResNeXt's blocks and their 3x3 convolutions.

    Every module is built on the meta device and run on one (1, c_i, size, size) input; ``ratio`` is the
    FLOPs relative to the plain 3x3 convolution c_i -> c_o.
    """
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
        rows = {}
        for name, (net, c) in nets.items():
            flops = count_flops(
                net, torch.empty(1, c, size, size)
            )  # this first call materializes Lazy layers
            rows[name] = dict(params=sum(p.numel() for p in net.parameters()), flops=flops)
    table = pd.DataFrame(rows).T
    table["ratio"] = table.flops / table.flops.iloc[1]
    return table


def resnext_cost_view(c_i: int, c_o: int, groups: int, bot_mul: float):
    """What the explorer shows: ``resnext_cost`` in MFLOPs, or why these numbers are refused."""
    try:
        table = resnext_cost(c_i, c_o, groups, bot_mul)
    except ValueError as e:
        print(f"Refused: {e}")
        return None
    table = table.assign(MFLOPs=table.flops / 1e6).drop(columns="flops").round(3)
    # interactive() shows only what its function displays, so display here, on every change.
    IPython.display.display(table)
    return table


class ResNeXt(ResNet):
    """ResNeXt (Xie et al., 2017): ResNet's stem, stages and head, with ResNeXt blocks in the stages.

    Args:
        arch: one (num_residuals, num_channels) pair per stage, as for ``ResNet``.
        groups: number of groups g of every block's 3x3 convolution.
        bot_mul: bottleneck multiplier of every block; b = round(num_channels * bot_mul).
        lr, num_classes, stem_kernel, stem_stride: as for ``ResNet``.

    Shapes: (N, C, H, W) -> (N, num_classes).
    """

    def __init__(
        self,
        arch,
        groups: int,
        bot_mul: float,
        lr: float = 0.1,
        num_classes: int = 10,
        stem_kernel: int = 7,
        stem_stride: int = 2,
    ):
        self.groups, self.bot_mul = groups, bot_mul  # read by block() while ResNet builds the stages
        super().__init__(arch, lr, num_classes, stem_kernel, stem_stride)
        self.hparams.update(groups=groups, bot_mul=bot_mul)


@d2l.add_to_class(ResNeXt)
def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Sequential:
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(ResNeXtBlock(num_channels, self.groups, self.bot_mul, use_1x1conv=True, strides=2))
        else:
            blk.append(ResNeXtBlock(num_channels, self.groups, self.bot_mul))
    return nn.Sequential(*blk)

"""Measurements and views of notebook 03 (ResNeXt); costs are counted on the meta device (shapes only)."""

import pandas as pd
import torch
from IPython.display import display
from torch import nn

from d2l_ext.measure import count_flops, num_params
from d2l_ext.resnet import Residual
from d2l_ext.resnext import ResNeXtBlock, bottleneck_channels

__all__ = ["conv_cost", "copy_torchvision_bottleneck", "resnext_cost", "resnext_cost_view"]


def conv_cost(c_i: int, c_o: int, groups: int, kernel_size: int = 3, size: int = 28) -> dict[str, int]:
    """Weights, parameters and forward FLOPs of ``nn.Conv2d(c_i, c_o, kernel_size, groups=groups)`` on
    one (1, c_i, size, size) input."""
    with torch.device("meta"):
        conv = nn.Conv2d(c_i, c_o, kernel_size, padding=kernel_size // 2, groups=groups)
        flops = count_flops(conv, torch.empty(1, c_i, size, size))
    return dict(groups=groups, weights=conv.weight.numel(), params=num_params(conv), flops=flops)


def resnext_cost(c_i: int, c_o: int, groups: int, bot_mul: float, size: int = 28) -> list[dict]:
    """Rows of ``module``, ``params``, ``flops`` and ``ratio`` (FLOPs over the plain 3x3 convolution's)
    for ``Residual(c_o)``, the plain 3x3 convolution c_i -> c_o, the grouped b -> b one and
    ``ResNeXtBlock(c_o, groups, bot_mul)``; the block's ValueError if it refuses the numbers."""
    b = bottleneck_channels(c_o, groups, bot_mul)
    shortcut = c_i != c_o
    with torch.device("meta"):
        block = ResNeXtBlock(c_o, groups, bot_mul, use_1x1conv=shortcut)
        nets = {
            f"Residual({c_o}): two 3x3 convs": (Residual(c_o, use_1x1conv=shortcut), c_i),
            f"3x3 conv {c_i} -> {c_o}": (nn.Conv2d(c_i, c_o, 3, padding=1), c_i),
            f"3x3 conv {b} -> {b}, {groups} groups": (nn.Conv2d(b, b, 3, padding=1, groups=groups), b),
            f"ResNeXtBlock({c_o}, {groups}, {bot_mul})": (block, c_i),
        }
        rows = []
        for name, (net, c) in nets.items():
            X = torch.empty(1, c, size, size)
            rows.append(dict(module=name, params=num_params(net, X), flops=count_flops(net, X)))
    for row in rows:
        row["ratio"] = row["flops"] / rows[1]["flops"]
    return rows


def resnext_cost_view(c_i: int, c_o: int, groups: int, bot_mul: float) -> pd.DataFrame | None:
    """`resnext_cost` as a table in MFLOPs, displayed and returned; or, for numbers the block refuses,
    the reason, printed, and None."""
    try:
        rows = resnext_cost(c_i, c_o, groups, bot_mul)
    except ValueError as e:
        print(f"Refused: {e}")
        return None
    table = pd.DataFrame(rows).set_index("module").rename_axis(None)
    table = table.assign(MFLOPs=table.flops / 1e6).drop(columns="flops").round(3)
    display(table)  # interactive() shows only what its function displays, on every change
    return table


def copy_torchvision_bottleneck(blk: nn.Module, ref: nn.Module) -> nn.Module:
    """Copy the weights and BN statistics of torchvision's ``Bottleneck`` ``ref`` into the built
    `ResNeXtBlock` ``blk``, whose convolutions keep their own biases; returns ``blk``."""
    names = {n: n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")}
    if blk.conv4 is not None:
        names |= dict(conv4="downsample.0", bn4="downsample.1")
    with torch.no_grad():
        for ours, theirs in names.items():
            for key, value in ref.get_submodule(theirs).state_dict().items():
                getattr(blk.get_submodule(ours), key).copy_(value)
    return blk

# Generated from notebooks/03_resnext.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""03 · ResNeXt: grouped convolutions, and what `groups` means

The definitions saved from notebooks/03_resnext.ipynb; the comment above each names its cell
(counted from 1, markdown cells included).
"""

import torch
from torch import nn
from torch.nn import functional as F

from d2l_ext.batch_norm import check  # saved by 01_batch_norm.ipynb
from d2l_ext.resnet import ResNet, check_count  # saved by 02_resnet.ipynb

__all__ = ["group_conv_by_split", "bottleneck_channels", "ResNeXtBlock", "ResNeXt"]


# notebooks/03_resnext.ipynb, cell 4
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


# notebooks/03_resnext.ipynb, cell 21
def bottleneck_channels(num_channels: int, groups: int, bot_mul: float) -> int:
    """The bottleneck width b = round(num_channels * bot_mul), checked to split into ``groups`` groups."""
    usage = "e.g. ResNeXtBlock(256, groups=32, bot_mul=0.5)"
    check_count(
        num_channels,
        f"num_channels is the number of output channels, a positive int, {usage}; got {num_channels!r}.",
    )
    check_count(groups, f"groups is the number of groups, a positive int, {usage}; got {groups!r}.")
    bad_mul = f"bot_mul is the bottleneck multiplier, a positive number, {usage}; got {bot_mul!r}."
    if not isinstance(bot_mul, int | float):
        raise TypeError(bad_mul)
    if isinstance(bot_mul, bool) or not bot_mul > 0:
        raise ValueError(bad_mul)
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


# notebooks/03_resnext.ipynb, cell 23
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
        form = "a positive int (2 halves height and width)"
        check_count(strides, f"strides is the stride of the 3x3 convolution, {form}; got {strides!r}.")
        check(strides == 1 or use_1x1conv, f"strides={strides} changes the shape; pass use_1x1conv=True.")
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
        check(X.shape == Y.shape, f"{X.shape[1]} channels in, {Y.shape[1]} out: pass use_1x1conv=True.")
        return F.relu(Y + X)


# notebooks/03_resnext.ipynb, cell 61
class ResNeXt(ResNet):
    """ResNeXt (Xie et al., 2017): ResNet's stem, stages and head, with ResNeXt blocks in the stages.

    ``ResNet.__init__`` checks ``arch`` and builds the model; each residual block of its stages is
    then replaced by a ``ResNeXtBlock`` of the same width, stride and shortcut. (``block``, which
    ``ResNet.__init__`` calls, stays ResNet's.)

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
        super().__init__(arch, lr, num_classes, stem_kernel, stem_stride)
        self.groups, self.bot_mul = groups, bot_mul
        self.hparams.update(groups=groups, bot_mul=bot_mul)
        for stage in self.net[1:-1]:  # b2, b3, ...: the stem b1 and the head stay as they are
            for i, res in enumerate(stage):  # Residual(c, use_1x1conv, strides) -> ResNeXtBlock(c, ...)
                shortcut, strides = res.conv3 is not None, res.conv1.stride[0]
                stage[i] = ResNeXtBlock(res.conv1.out_channels, groups, bot_mul, shortcut, strides)

# Generated from notebooks/02_resnet.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""02 · ResNet: residual blocks, and the evidence for why they work

The definitions saved from notebooks/02_resnet.ipynb; the comment above each names its cell
(counted from 1, markdown cells included).
"""

import operator

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.batch_norm import check  # saved by 01_batch_norm.ipynb

__all__ = [
    "check_count",
    "Residual",
    "ResNet",
    "check_arch",
    "ResNet18",
    "PlainBlock",
    "PlainNet",
    "PreActResidual",
]


# notebooks/02_resnet.ipynb, cell 11
def check_count(value, message: str) -> int:
    """``value`` as an int if it is a positive integer; otherwise ``message`` (which should show a
    valid call) as a TypeError (16.5, "64", None) or a ValueError (0, -1, True)."""
    try:
        count = operator.index(value)  # ints, numpy's too, but no floats
    except TypeError:
        raise TypeError(message) from None
    check(not isinstance(value, bool) and count >= 1, message)
    return count


# notebooks/02_resnet.ipynb, cell 12
class Residual(nn.Module):
    """The residual block of ResNet (He et al., 2016): ReLU(g(X) + X), g = conv-BN-ReLU-conv-BN.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: pass the shortcut through a 1x1 convolution (stride ``strides``) so that it
            matches the output shape; needed when the stride or the channel count changes.
        strides: stride of the first 3x3 convolution; 2 halves height and width.

    Shapes: (N, C, H, W) -> (N, num_channels, ceil(H / strides), ceil(W / strides)).
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1):
        super().__init__()
        usage = "e.g. Residual(128, use_1x1conv=True, strides=2)"
        check_count(num_channels, f"num_channels must be a positive int, {usage}; got {num_channels!r}.")
        check_count(strides, f"strides must be a positive int, {usage}; got {strides!r}.")
        check(strides == 1 or use_1x1conv, f"strides={strides} changes the shape; pass use_1x1conv=True.")
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        check(X.shape == Y.shape, f"{X.shape[1]} channels in, {Y.shape[1]} out: pass use_1x1conv=True.")
        Y += X
        return F.relu(Y)


# notebooks/02_resnet.ipynb, cell 30
class ResNet(d2l.Classifier):
    """ResNet (He et al., 2016) as in the book: stem b1, stages of residual blocks, then a linear head.

    Args:
        arch: one (num_residuals, num_channels) pair per stage; every stage after the first
            starts with a block that halves height and width.
        lr: learning rate.
        num_classes: outputs of the head.
        stem_kernel, stem_stride: the stem's convolution (the book's: 7 and 2). The stem has
            arch[0][1] channels (the book's 64 for ResNet-18).

    Shapes: (N, C, H, W) -> (N, num_classes).
    """

    def b1(self) -> nn.Sequential:
        k, s = self.stem_kernel, self.stem_stride
        return nn.Sequential(
            nn.LazyConv2d(self.arch[0][1], kernel_size=k, stride=s, padding=k // 2),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    # notebooks/02_resnet.ipynb, cell 32
    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                blk.append(Residual(num_channels))
        return nn.Sequential(*blk)

    # notebooks/02_resnet.ipynb, cell 35
    def __init__(self, arch, lr=0.1, num_classes=10, stem_kernel=7, stem_stride=2):
        super().__init__()
        arch = check_arch(arch)  # subclasses (PlainNet, ResNeXt) build through here: they check too
        stem = "stem_kernel (odd) and stem_stride are positive ints, e.g. 7 and 2"
        stem = f"{stem}; got {stem_kernel!r} and {stem_stride!r}."
        if check_count(stem_kernel, stem) % 2 == 0:
            raise ValueError(stem)
        check_count(stem_stride, stem)
        check_count(num_classes, f"num_classes must be a positive int, e.g. 10; got {num_classes!r}.")
        self.save_hyperparameters()
        self.net = nn.Sequential()
        self.net.add_module("b1", self.b1())
        for i, b in enumerate(arch):
            self.net.add_module(f"b{i + 2}", self.block(*b, first_block=(i == 0)))
        self.net.add_module(
            "last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes))
        )


# notebooks/02_resnet.ipynb, cell 34
def check_arch(arch) -> tuple[tuple[int, int], ...]:
    """``arch`` as a tuple of (num_residuals, num_channels) pairs of positive ints; else an error
    that shows this form, raised where the model is built instead of deep inside its first call."""
    form = (
        "arch is a sequence of (num_residuals, num_channels) pairs of positive ints, "
        f"e.g. ((2, 64), (2, 128), (2, 256), (2, 512)); got {arch!r}."
    )
    if isinstance(arch, str) or not hasattr(arch, "__iter__"):
        raise TypeError(form)
    stages = tuple(arch)
    if not all(isinstance(s, list | tuple) and len(s) == 2 for s in stages):
        raise TypeError(form)
    if not stages:
        raise ValueError(form)
    return tuple((check_count(n, form), check_count(c, form)) for n, c in stages)


# notebooks/02_resnet.ipynb, cell 36
class ResNet18(ResNet):
    """ResNet-18 as in the book: four stages of two blocks, 64-128-256-512 channels, 7x7 stride-2 stem."""

    def __init__(self, lr: float = 0.1, num_classes: int = 10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)


# notebooks/02_resnet.ipynb, cell 58
class PlainBlock(Residual):
    """A residual block without its shortcut, ReLU(g(X)): the "plain" baseline of He et al. (2016)."""

    def __init__(self, num_channels: int, strides: int = 1):
        super().__init__(num_channels, use_1x1conv=strides != 1, strides=strides)
        self.conv3 = None  # no shortcut, so no 1x1 convolution to match it

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        return F.relu(self.bn2(self.conv2(Y)))


# notebooks/02_resnet.ipynb, cell 59
class PlainNet(ResNet):
    """ResNet with every shortcut removed: the same stem, stages, widths and head (He et al., 2016)."""

    def block(self, num_residuals, num_channels, first_block=False):
        strides = [1 if i > 0 or first_block else 2 for i in range(num_residuals)]
        return nn.Sequential(*[PlainBlock(num_channels, s) for s in strides])


# notebooks/02_resnet.ipynb, cell 72
class PreActResidual(nn.Module):
    """The pre-activation block of He et al. (2016b): X + g(X), g = BN-ReLU-conv-BN-ReLU-conv.

    Nothing follows the addition, so the shortcut is an identity: the block keeps the channels
    and the shape. Shapes: (N, num_channels, H, W) -> (N, num_channels, H, W).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        check_count(num_channels, f"num_channels must be a positive int, e.g. 64; got {num_channels!r}.")
        self.bn1, self.bn2 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[1] != self.conv2.out_channels:
            raise ValueError(
                f"PreActResidual({self.conv2.out_channels}) got {X.shape[1]} channels; its identity "
                "shortcut needs as many channels in as out."
            )
        Y = self.conv1(F.relu(self.bn1(X)))
        Y = self.conv2(F.relu(self.bn2(Y)))
        return Y + X

# Generated from notebooks/04_densenet.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""04 · DenseNet: concatenate instead of add

The definitions saved from notebooks/04_densenet.ipynb; the comment above each names its cell
(counted from 1, markdown cells included).
"""

import torch
from d2l import torch as d2l
from torch import nn

__all__ = [
    "conv_block",
    "DenseBlock",
    "transition_block",
    "check_densenet_args",
    "densenet_sizes",
    "densenet_min_input",
    "DenseNet",
    "densenet_channels",
]


# notebooks/04_densenet.ipynb, cell 9
def conv_block(num_channels: int) -> nn.Sequential:
    """BN, ReLU, 3x3 convolution (padding 1): (N, C, H, W) -> (N, num_channels, H, W)."""
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
    )


# notebooks/04_densenet.ipynb, cell 14
class DenseBlock(nn.Module):
    """The dense block of DenseNet (Huang et al., 2017): each conv block reads all maps before it.

    Args:
        num_convs: number of conv blocks.
        num_channels: output channels of each conv block (the growth rate).

    Shapes: (N, C, H, W) -> (N, C + num_convs * num_channels, H, W).
    """

    def __init__(self, num_convs: int, num_channels: int):
        super().__init__()
        layer = []
        for _ in range(num_convs):
            layer.append(conv_block(num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            # Concatenate the input and output of each block along the channels
            X = torch.cat((X, Y), dim=1)
        return X


# notebooks/04_densenet.ipynb, cell 22
def transition_block(num_channels: int) -> nn.Sequential:
    """BN, ReLU, 1x1 convolution, 2x2 average pool: (N, C, H, W) -> (N, num_channels, H // 2, W // 2)."""
    return nn.Sequential(
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


# notebooks/04_densenet.ipynb, cell 28
def check_densenet_args(num_channels, growth_rate, arch, lr, num_classes, stem_kernel, stem_stride):
    """Raise a TypeError (wrong type) or a ValueError (wrong value) that shows the form an argument takes."""

    def count(n):  # an int, but not True or False (bool is a subclass of int)
        return isinstance(n, int) and not isinstance(n, bool)

    forms = {  # name: (value, the form it takes)
        "num_channels": (num_channels, "a positive int, the stem's output channels, e.g. 64"),
        "growth_rate": (growth_rate, "a positive int, the channels each conv block adds, e.g. 32"),
        "arch": (arch, "a sequence of positive ints, the conv blocks per dense block, e.g. (4, 4, 4, 4)"),
        "lr": (lr, "a positive number, the learning rate, e.g. 0.1"),
        "num_classes": (num_classes, "a positive int, the outputs of the head, e.g. 10"),
        "stem_kernel": (
            stem_kernel,
            "an odd positive int, the stem's kernel: 7 in the book, 3 for small images",
        ),
        "stem_stride": (stem_stride, "a positive int, the stem's stride: 2 in the book, 1 for small images"),
    }
    right_type = {name: count(value) for name, (value, _) in forms.items()}
    right_type |= {
        "arch": isinstance(arch, tuple | list) and all(count(n) for n in arch),
        "lr": isinstance(lr, int | float) and not isinstance(lr, bool),
    }
    for name, (value, form) in forms.items():
        if not right_type[name]:
            raise TypeError(f"{name} is {form}; got {value!r}.")
    right_value = {name: value >= 1 for name, (value, _) in forms.items() if name not in ("arch", "lr")}
    right_value |= {"arch": min(arch, default=0) >= 1, "lr": lr > 0}
    right_value["stem_kernel"] &= stem_kernel % 2 == 1
    for name, (value, form) in forms.items():
        if not right_value[name]:
            raise ValueError(f"{name} is {form}; got {value!r}.")


# notebooks/04_densenet.ipynb, cell 30
def densenet_sizes(size: int, stem_kernel=7, stem_stride=2, num_transitions=3) -> list[int]:
    """Height (or width) after DenseNet's stem convolution, its max-pool and each transition layer."""
    sizes = [(size + 2 * (stem_kernel // 2) - stem_kernel) // stem_stride + 1]  # nn.Conv2d
    sizes.append((sizes[-1] + 2 * 1 - 3) // 2 + 1)  # nn.MaxPool2d(3, stride=2, padding=1)
    for _ in range(num_transitions):
        sizes.append(sizes[-1] // 2)  # nn.AvgPool2d(2, stride=2)
    return sizes


# notebooks/04_densenet.ipynb, cell 30
def densenet_min_input(stem_kernel=7, stem_stride=2, num_transitions=3) -> int:
    """The smallest height (and width) for which no stage of DenseNet shrinks the map to nothing."""
    size = 1
    while min(densenet_sizes(size, stem_kernel, stem_stride, num_transitions)) < 1:
        size += 1
    return size


# notebooks/04_densenet.ipynb, cell 32
class DenseNet(d2l.Classifier):
    """DenseNet (Huang et al., 2017) as in the book: stem, dense blocks with transitions, BN-ReLU head.

    Args:
        num_channels: channels of the stem.
        growth_rate: output channels of every conv block.
        arch: number of conv blocks in each dense block; a transition layer between two dense blocks
            halves channels, height and width.
        lr: learning rate.
        num_classes: outputs of the head.
        stem_kernel, stem_stride: the stem's convolution (the book's: 7 and 2).

    Shapes: (N, C, H, W) -> (N, num_classes), for H and W of at least ``self.min_input()``.
    """

    def b1(self) -> nn.Sequential:
        k, s = self.stem_kernel, self.stem_stride
        return nn.Sequential(
            nn.LazyConv2d(self.num_channels, kernel_size=k, stride=s, padding=k // 2),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    # notebooks/04_densenet.ipynb, cell 33
    def __init__(
        self,
        num_channels=64,
        growth_rate=32,
        arch=(4, 4, 4, 4),
        lr=0.1,
        num_classes=10,
        stem_kernel=7,
        stem_stride=2,
    ):
        super().__init__()
        check_densenet_args(num_channels, growth_rate, arch, lr, num_classes, stem_kernel, stem_stride)
        arch = tuple(arch)
        self.save_hyperparameters()
        self.net = nn.Sequential()
        self.net.add_module("b1", self.b1())
        for i, num_convs in enumerate(arch):
            self.net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate))
            # The number of output channels in the previous dense block
            num_channels += num_convs * growth_rate
            # A transition layer that halves the number of channels is added between the dense blocks
            if i != len(arch) - 1:
                num_channels //= 2
                self.net.add_module(f"tran_blk{i + 1}", transition_block(num_channels))
        self.net.add_module(
            "last",
            nn.Sequential(
                nn.LazyBatchNorm2d(),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                nn.Flatten(),
                nn.LazyLinear(num_classes),
            ),
        )

    # notebooks/04_densenet.ipynb, cell 34
    def min_input(self) -> int:
        """The smallest height and width this model accepts."""
        return densenet_min_input(self.stem_kernel, self.stem_stride, len(self.arch) - 1)

    # notebooks/04_densenet.ipynb, cell 35
    def forward(self, X):
        """Class scores for a batch X of shape (N, C, H, W); refuses images too small for the stages."""
        if X.ndim != 4:
            raise ValueError(f"DenseNet expects a batch of images (N, C, H, W), got shape {tuple(X.shape)}.")
        m = self.min_input()
        if min(X.shape[-2:]) < m:
            k, s, t = self.stem_kernel, self.stem_stride, len(self.arch) - 1
            fix = f"Resize the data, e.g. FashionMNIST(resize=96) (the book's size) or resize={m}"
            if (k, s) != (3, 1):
                small = densenet_min_input(3, 1, t)
                fix += f", or use the small-image stem stem_kernel=3, stem_stride=1 (needs {small}x{small})"
            raise ValueError(
                f"DenseNet got {X.shape[-2]}x{X.shape[-1]} images, but its {k}x{k} stride-{s} stem, the "
                f"stride-2 max-pool and {t} transition layers need at least {m}x{m}. {fix}."
            )
        return self.net(X)


# notebooks/04_densenet.ipynb, cell 41
def densenet_channels(num_channels: int, growth_rate: int, arch) -> list[tuple[str, int]]:
    """The channel count after the stem, every dense block and every transition of DenseNet."""
    stages = [("b1", num_channels)]
    for i, num_convs in enumerate(arch):
        num_channels += num_convs * growth_rate
        stages.append((f"dense_blk{i + 1}", num_channels))
        if i != len(arch) - 1:
            num_channels //= 2
            stages.append((f"tran_blk{i + 1}", num_channels))
    return stages

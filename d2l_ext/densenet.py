# Generated from notebooks/04_densenet.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""04 · DenseNet: concatenate instead of add

The definitions saved from notebooks/04_densenet.ipynb.
"""

import torch
from d2l import torch as d2l
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from d2l_ext.training import has_lazy


def plot_connectivity(num_convs: int = 4, in_channels: int = 3, growth_rate: int = 10) -> int:
    """Draw a chain of residual blocks above a dense block of ``num_convs`` layers (Huang et al., 2017).

    Circles are feature maps (channels below), boxes are layers (input channels below), arrows are
    inputs, coloured by the map they come from. Returns the number of arrows into the dense block's
    layers, ``num_convs * (num_convs + 1) / 2``.
    """
    ylims = [(-0.9, 1.2), (-0.9, 0.4 + 0.6 * num_convs)]
    heights = [top - bottom for bottom, top in ylims]
    _, axes = d2l.plt.subplots(
        2, 1, figsize=(1.2 * num_convs + 1, 0.6 * sum(heights) + 1), height_ratios=heights
    )
    arrows = 0
    for ax, dense, ylim in zip(axes, (False, True), ylims):
        for i in range(num_convs + 1):  # map i at x = 2i, the layer that makes it at x = 2i - 1
            ax.add_patch(d2l.plt.Circle((2 * i, 0), 0.3, color=f"C{i if dense else 0}", alpha=0.8))
            ax.text(2 * i, -0.45, growth_rate if dense and i else in_channels, ha="center", va="top")
            if i == 0:
                continue
            if not dense:  # x_i = x_{i-1} + g_i(x_{i-1}): the identity path is the red arc
                ax.text(2 * i, 0, "+", ha="center", va="center", color="w", fontsize=14)
            name = f"$f_{i}$" if dense else f"$g_{i}$"
            ax.text(2 * i - 1, 0, name, ha="center", va="center", bbox=dict(fc="w", ec="0.3"))
            reads = in_channels + (i - 1) * growth_rate if dense else in_channels
            ax.text(2 * i - 1, -0.45, f"in {reads}", ha="center", va="top", fontsize=8, color="0.4")
            ax.annotate("", (2 * i - 0.3, 0), (2 * i - 0.75, 0), arrowprops=dict(arrowstyle="->"))
            for j in range(i) if dense else [i - 1]:
                style = dict(arrowstyle="->", color=f"C{j if dense else 0}")
                if j == i - 1:
                    ax.annotate("", (2 * i - 1.3, 0), (2 * j + 0.3, 0), arrowprops=style)
                else:  # long-range inputs arc above the chain, higher the farther they reach
                    style["connectionstyle"] = "arc3,rad=-0.35"
                    ax.annotate("", (2 * i - 1.15, 0.25), (2 * j + 0.15, 0.28), arrowprops=style)
                arrows += dense
            if not dense:
                style = dict(arrowstyle="->", color="C3", connectionstyle="arc3,rad=-0.5")
                ax.annotate("", (2 * i - 0.15, 0.28), (2 * i - 1.85, 0.28), arrowprops=style)
        total = in_channels + num_convs * growth_rate
        title = f"dense block: concatenate, {in_channels} + {num_convs}x{growth_rate} = {total} channels out"
        ax.set_title(title if dense else "residual blocks: add")
        ax.set(xlim=(-0.5, 2 * num_convs + 0.5), ylim=ylim, aspect="equal")
        ax.axis("off")
    return arrows


def conv_block(num_channels: int) -> nn.Sequential:
    """BN, ReLU, 3x3 convolution (padding 1): (N, C, H, W) -> (N, num_channels, H, W)."""
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
    )


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


def transition_block(num_channels: int) -> nn.Sequential:
    """BN, ReLU, 1x1 convolution, 2x2 average pool: (N, C, H, W) -> (N, num_channels, H // 2, W // 2)."""
    return nn.Sequential(
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


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


def check_densenet_args(num_channels, growth_rate, arch, stem_kernel, stem_stride) -> None:
    """Raise a ValueError that names the problem and the fix if DenseNet's arguments cannot work."""
    if not arch or not all(isinstance(n, int) and n >= 1 for n in arch):
        raise ValueError(
            "arch must be a non-empty sequence of positive ints (conv blocks per dense block), "
            f"e.g. (4, 4, 4, 4); got {arch!r}."
        )
    if min(num_channels, growth_rate) < 1:
        raise ValueError(f"num_channels and growth_rate must be positive, got {num_channels}, {growth_rate}.")
    if stem_kernel < 1 or stem_kernel % 2 == 0 or stem_stride < 1:
        raise ValueError(
            "stem_kernel must be odd and positive (7 in the book, 3 for small images) and stem_stride "
            f"positive; got {stem_kernel} and {stem_stride}."
        )


@d2l.add_to_class(DenseNet)
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
    super(DenseNet, self).__init__()
    arch = tuple(arch)
    check_densenet_args(num_channels, growth_rate, arch, stem_kernel, stem_stride)
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


def stage_shapes(net: nn.Module, X: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The output shape of every top-level stage of ``net.net`` for the input ``X`` (in eval mode)."""
    shapes, was_training = {}, net.training
    net.eval()  # so that BN accepts a single image
    with torch.no_grad():
        for name, layer in net.net.named_children():
            X = layer(X)
            shapes[name] = tuple(X.shape)
    net.train(was_training)
    return shapes


def densenet_sizes(size: int, stem_kernel=7, stem_stride=2, num_transitions=3) -> list[int]:
    """Height (or width) after DenseNet's stem convolution, its max-pool and each transition layer."""
    sizes = [(size + 2 * (stem_kernel // 2) - stem_kernel) // stem_stride + 1]  # nn.Conv2d
    sizes.append((sizes[-1] + 2 * 1 - 3) // 2 + 1)  # nn.MaxPool2d(3, stride=2, padding=1)
    for _ in range(num_transitions):
        sizes.append(sizes[-1] // 2)  # nn.AvgPool2d(2, stride=2)
    return sizes


def densenet_min_input(stem_kernel=7, stem_stride=2, num_transitions=3) -> int:
    """The smallest height (and width) for which no stage of DenseNet shrinks the map to nothing."""
    size = 1
    while min(densenet_sizes(size, stem_kernel, stem_stride, num_transitions)) < 1:
        size += 1
    return size


@d2l.add_to_class(DenseNet)
def min_input(self) -> int:
    """The smallest height and width this model accepts."""
    return densenet_min_input(self.stem_kernel, self.stem_stride, len(self.arch) - 1)


@d2l.add_to_class(DenseNet)
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


def densenet_num_params(num_channels=64, growth_rate=32, arch=(4, 4, 4, 4), **kwargs) -> int:
    """The parameter count of ``DenseNet(num_channels, growth_rate, arch, **kwargs)`` for 1-channel images."""
    net = DenseNet(num_channels, growth_rate, arch, **kwargs).eval()
    with torch.no_grad():  # one call on the smallest image gives the Lazy layers their shapes
        net(torch.zeros(1, 1, net.min_input(), net.min_input()))
    return sum(p.numel() for p in net.parameters())


def saved_activation_bytes(net: nn.Module, X: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward pass of ``net`` on ``X``.

    Counts each storage once and leaves out the parameters and buffers (BN's running statistics),
    which the model keeps anyway; ``net`` is left in its previous mode.
    """
    if has_lazy(net):  # Lazy layers get their weights on the first call
        with torch.no_grad():
            net(X)
    state = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = net.training
    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        Y = net(X)  # keeps the graph, and with it every saved tensor, alive while we count
    net.train(was_training)
    del Y
    return sum(saved.values())


def count_flops(net: nn.Module, X: torch.Tensor) -> int:
    """Floating-point operations of one forward pass of ``net`` on ``X`` (a multiply-add counts 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(X)
    return counter.get_total_flops()

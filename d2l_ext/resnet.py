# Generated from notebooks/02_resnet.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""02 · ResNet: residual blocks, and the evidence for why they work

The definitions saved from notebooks/02_resnet.ipynb.
"""

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.training import Trainer


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
        if strides != 1 and not use_1x1conv:
            raise ValueError(
                f"Residual({num_channels}, strides={strides}) changes the output shape; "
                "pass use_1x1conv=True so the shortcut matches."
            )
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
        elif X.shape[1] != Y.shape[1]:
            raise ValueError(
                f"Residual({Y.shape[1]}) got an input with {X.shape[1]} channels; the shortcut "
                "cannot add them. Pass use_1x1conv=True so the shortcut matches."
            )
        Y += X
        return F.relu(Y)


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


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels))
    return nn.Sequential(*blk)


@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10, stem_kernel=7, stem_stride=2):
    super(ResNet, self).__init__()
    arch = tuple(tuple(stage) for stage in arch)
    if not arch or any(len(s) != 2 or min(s) < 1 for s in arch):
        raise ValueError(f"arch must be (num_residuals, num_channels) pairs of positive ints, got {arch!r}.")
    if stem_kernel < 1 or stem_kernel % 2 == 0 or stem_stride < 1:
        raise ValueError(
            f"stem_kernel must be odd and stem_stride positive, got {stem_kernel}, {stem_stride}."
        )
    self.save_hyperparameters()
    self.net = nn.Sequential()
    self.net.add_module("b1", self.b1())
    for i, b in enumerate(arch):
        self.net.add_module(f"b{i + 2}", self.block(*b, first_block=(i == 0)))
    self.net.add_module(
        "last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes))
    )


class ResNet18(ResNet):
    """ResNet-18 as in the book: four stages of two blocks, 64-128-256-512 channels, 7x7 stride-2 stem."""

    def __init__(self, lr: float = 0.1, num_classes: int = 10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)


@d2l.add_to_class(ResNet)
def stage_shapes(self, X_shape):
    """Output shape of every stage of ``self.net`` (stem, stages, head) for an input of ``X_shape``."""
    X, shapes, was_training = torch.zeros(X_shape), {}, self.training
    self.eval()  # BN in eval mode: shapes for any batch size, and no change to running statistics
    with torch.no_grad():
        for name, layer in self.net.named_children():
            X = layer(X)
            shapes[name] = tuple(X.shape)
    self.train(was_training)
    return shapes


class PlainBlock(Residual):
    """A residual block without its shortcut, ReLU(g(X)): the "plain" baseline of He et al. (2016)."""

    def __init__(self, num_channels: int, strides: int = 1):
        super().__init__(num_channels, use_1x1conv=strides != 1, strides=strides)
        self.conv3 = None  # no shortcut, so no 1x1 convolution to match it

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        return F.relu(self.bn2(self.conv2(Y)))


class PlainNet(ResNet):
    """ResNet with every shortcut removed: the same stem, stages, widths and head (He et al., 2016)."""

    def block(self, num_residuals, num_channels, first_block=False):
        strides = [1 if i > 0 or first_block else 2 for i in range(num_residuals)]
        return nn.Sequential(*[PlainBlock(num_channels, s) for s in strides])


class StepTrainer(Trainer):
    """`Trainer` that also records the training loss of every step, in ``step_losses``."""

    def fit(self, model, data):
        self.step_losses = []
        return super().fit(model, data)

    def training_loss(self, Y_hat, y):
        loss = super().training_loss(Y_hat, y)
        self.step_losses.append(loss.item())
        return loss


def conv_grad_norms(net, X, y):
    """Norm of the loss gradient w.r.t. the weight of every 3x3 (and stem) convolution of ``net``,
    input side first, for one minibatch. The 1x1 shortcut convolutions are left out, so that a
    ResNet and its PlainNet give lists of the same length."""
    net.zero_grad()
    net.loss(net(X), y).backward()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return [m.weight.grad.norm().item() for m in convs]


def init_grad_norms(Net, num_residuals, widths, X, y, seed=0, **kwargs):
    """`conv_grad_norms` of ``Net`` with ``num_residuals`` blocks per stage, initialized as `Trainer` does."""
    torch.manual_seed(seed)
    net = Net(tuple((num_residuals, w) for w in widths), **kwargs)
    net.apply_init([X[:2]], d2l.init_cnn)
    return conv_grad_norms(net, X, y)

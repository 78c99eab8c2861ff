# Generated from notebooks/01_batch_norm.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""01 · Batch normalization and layer normalization, shown rather than told

The definitions saved from notebooks/01_batch_norm.ipynb; the comment above each names its cell
(counted from 1, markdown cells included).
"""

import numbers

import torch
from d2l import torch as d2l
from torch import nn

__all__ = [
    "batch_norm",
    "check",
    "BatchNorm",
    "book_batch_norm",
    "BookBatchNorm",
    "BNLeNetScratch",
    "BNLeNet",
    "unpadded_lenet",
    "BNLeNetAfter",
    "layer_norm",
    "LayerNorm",
]


# notebooks/01_batch_norm.ipynb, cell 6
def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, *, training=True):
    """Batch normalization (Ioffe & Szegedy, 2015) with PyTorch's conventions.

    Training mode normalizes with the minibatch mean and biased variance and returns the running
    estimates updated as ``(1 - momentum) * old + momentum * batch``, with the unbiased batch
    variance; prediction mode (``training=False``) normalizes with the running estimates and
    returns them unchanged. Shapes: X (N, C) with the rest (1, C), or X (N, C, H, W) with (1, C, 1, 1).

    Returns:
        (Y, moving_mean, moving_var), Y of the shape of X.
    """
    if X.dim() not in (2, 4):
        raise ValueError(
            f"batch_norm takes (N, C) or (N, C, H, W) input, got shape {tuple(X.shape)}; "
            "flatten or reshape it first."
        )
    if not training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        dims = (0,) if X.dim() == 2 else (0, 2, 3)  # per feature, or per channel over N, H, W
        n = X.numel() // X.shape[1]  # values per feature: N, or N * H * W
        if n < 2:
            raise ValueError(
                f"batch_norm in training mode needs more than one value per channel, got input of shape "
                f"{tuple(X.shape)}: use a batch of at least 2 examples, or prediction mode."
            )
        mean = X.mean(dim=dims, keepdim=True)
        var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: it normalizes this batch
        X_hat = (X - mean) / torch.sqrt(var + eps)
        with torch.no_grad():  # the running estimates are bookkeeping, not part of the graph
            dtype = moving_mean.dtype  # kept, as PyTorch keeps it, whatever the input's (autocast)
            moving_mean = ((1.0 - momentum) * moving_mean + momentum * mean).to(dtype)
            moving_var = ((1.0 - momentum) * moving_var + momentum * var * (n / (n - 1))).to(dtype)
    return gamma * X_hat + beta, moving_mean, moving_var


# notebooks/01_batch_norm.ipynb, cell 8
def check(ok: bool, message: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error(message)`` unless ``ok``: an argument check in one line. Unlike ``assert`` it also
    runs under ``python -O``, and it raises what PyTorch raises: a ValueError, or a TypeError for a
    value of the wrong type. The message says what to pass."""
    if not ok:
        raise error(message)


# notebooks/01_batch_norm.ipynb, cell 8
def _check_eps(eps: float) -> float:
    """``eps`` as a float; it is added to a variance, so anything but a number >= 0 is refused."""
    message = f"eps must be a number >= 0 such as 1e-5 (PyTorch's default), got {eps!r}."
    check(isinstance(eps, numbers.Real) and not isinstance(eps, bool), message, TypeError)
    check(eps >= 0, f"eps must be >= 0 (PyTorch's default is 1e-05), got {eps!r}.")  # also refuses NaN
    return float(eps)


# notebooks/01_batch_norm.ipynb, cell 8
def _check_momentum(momentum: float | None) -> float | None:
    """``momentum`` if it is a number in [0, 1], the weight of the new batch in the running estimates,
    or None, for a cumulative average; anything else is refused."""
    message = (
        f"momentum must be a number in [0, 1], the weight of the new batch (PyTorch's default is 0.1), "
        f"or None for a cumulative average; got {momentum!r}."
    )
    number = isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
    check(momentum is None or number, message, TypeError)
    check(momentum is None or 0 <= momentum <= 1, message)
    return momentum


# notebooks/01_batch_norm.ipynb, cell 9
class BatchNorm(nn.Module):
    """Batch normalization (Ioffe & Szegedy, 2015) from scratch; equals nn.BatchNorm1d/2d.

    Unlike the book's layer, the running statistics are registered buffers (in ``state_dict``, moved
    by ``.to()``), the mode follows ``self.training`` (``.train()``/``.eval()``) rather than
    ``torch.is_grad_enabled()``, and ``momentum`` has PyTorch's meaning and default.

    Args:
        num_features: outputs of a fully connected layer, or channels of a convolution.
        num_dims: 2 for a fully connected layer, 4 for a convolutional one.
        eps: added to the variance, >= 0.
        momentum: weight of the new batch in the running estimates, in [0, 1]; None: cumulative average.

    Shapes: (N, num_features) if num_dims == 2, else (N, num_features, H, W); output the same.
    """

    def __init__(self, num_features: int, num_dims: int, *, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        check(num_dims in (2, 4), f"num_dims is 2 (fully connected) or 4 (convolution), not {num_dims!r}.")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = _check_eps(eps), _check_momentum(momentum)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    # notebooks/01_batch_norm.ipynb, cell 10
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        bad = f"input {tuple(X.shape)} does not fit BatchNorm({self.num_features}, num_dims={self.num_dims})."
        check(X.dim() == self.num_dims and X.shape[1] == self.num_features, bad)
        momentum = self.momentum
        if self.training and momentum is None:  # cumulative average over the batches seen so far
            momentum = 1.0 / (int(self.num_batches_tracked) + 1)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=self.eps, momentum=momentum, training=self.training)  # fmt: skip
        if self.training:
            self.num_batches_tracked += 1
        return Y

    # notebooks/01_batch_norm.ipynb, cell 10
    def extra_repr(self) -> str:
        return f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}"


# notebooks/01_batch_norm.ipynb, cell 15
def book_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # Use is_grad_enabled to determine whether we are in training mode
    if not torch.is_grad_enabled():
        # In prediction mode, use mean and variance obtained by moving average
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            # When using a fully connected layer, calculate the mean and
            # variance on the feature dimension
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # When using a two-dimensional convolutional layer, calculate the
            # mean and variance on the channel dimension (axis=1). Here we
            # need to maintain the shape of X, so that the broadcasting
            # operation can be carried out later
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        # In training mode, the current mean and variance are used
        X_hat = (X - mean) / torch.sqrt(var + eps)
        # Update the mean and variance using moving average
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var
    Y = gamma * X_hat + beta  # Scale and shift
    return Y, moving_mean.data, moving_var.data


# notebooks/01_batch_norm.ipynb, cell 16
class BookBatchNorm(nn.Module):
    # num_features: the number of outputs for a fully connected layer or the
    # number of output channels for a convolutional layer. num_dims: 2 for a
    # fully connected layer and 4 for a convolutional layer
    def __init__(self, num_features, num_dims):
        super().__init__()
        if num_dims == 2:
            shape = (1, num_features)
        else:
            shape = (1, num_features, 1, 1)
        # The scale parameter and the shift parameter (model parameters) are
        # initialized to 1 and 0, respectively
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        # The variables that are not model parameters are initialized to 0 and
        # 1
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        # If X is not on the main memory, copy moving_mean and moving_var to
        # the device where X is located
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        # Save the updated moving_mean and moving_var
        Y, self.moving_mean, self.moving_var = book_batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.1
        )
        return Y


# notebooks/01_batch_norm.ipynb, cell 34
class BNLeNetScratch(d2l.Classifier):
    """LeNet with batch normalization (Ioffe & Szegedy, 2015) before each sigmoid; our BatchNorm.

    Shapes: (N, 1, 28, 28) -> (N, num_classes).
    """

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5), BatchNorm(6, num_dims=4),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), BatchNorm(16, num_dims=4),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.LazyLinear(120), BatchNorm(120, num_dims=2),
            nn.Sigmoid(), nn.LazyLinear(84), BatchNorm(84, num_dims=2),
            nn.Sigmoid(), nn.LazyLinear(num_classes),
        )  # fmt: skip


# notebooks/01_batch_norm.ipynb, cell 35
class BNLeNet(d2l.Classifier):
    """LeNet with batch normalization (Ioffe & Szegedy, 2015) before each sigmoid; PyTorch's layers.

    Shapes: (N, 1, 28, 28) -> (N, num_classes).
    """

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.LazyLinear(120), nn.LazyBatchNorm1d(),
            nn.Sigmoid(), nn.LazyLinear(84), nn.LazyBatchNorm1d(),
            nn.Sigmoid(), nn.LazyLinear(num_classes),
        )  # fmt: skip


# notebooks/01_batch_norm.ipynb, cell 37
def unpadded_lenet(**kwargs):
    """The book's LeNet with its first convolution unpadded: BN-LeNet without its BN layers."""
    net = d2l.LeNet(**kwargs)
    net.net[0] = nn.LazyConv2d(6, kernel_size=5)  # the book's has padding=2
    return net


# notebooks/01_batch_norm.ipynb, cell 116
class BNLeNetAfter(d2l.Classifier):
    """BN-LeNet with each batch normalization after its sigmoid instead of before it.

    Shapes: (N, 1, 28, 28) -> (N, num_classes).
    """

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5), nn.Sigmoid(), nn.LazyBatchNorm2d(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(), nn.LazyBatchNorm2d(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.LazyLinear(120), nn.Sigmoid(), nn.LazyBatchNorm1d(),
            nn.LazyLinear(84), nn.Sigmoid(), nn.LazyBatchNorm1d(),
            nn.LazyLinear(num_classes),
        )  # fmt: skip


# notebooks/01_batch_norm.ipynb, cell 121
def layer_norm(X, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """Layer normalization (Ba, Kiros & Hinton, 2016), with ``F.layer_norm``'s arguments.

    Each example is standardized over its last dimensions ``normalized_shape`` (an int or a tuple;
    None: all but the batch axis, the lecture's LN), then scaled by ``weight`` and shifted by
    ``bias`` where given. Shapes: X (N, ..., *normalized_shape) -> the same; weight, bias normalized_shape.
    """
    if X.dim() < 2:
        raise ValueError(f"layer_norm needs a batch axis and at least one more, got shape {tuple(X.shape)}.")
    shape = tuple(X.shape[1:]) if normalized_shape is None else _to_shape(normalized_shape)
    if len(shape) >= X.dim() or tuple(X.shape[-len(shape) :]) != shape:
        raise ValueError(
            f"normalizing over {shape} needs input of shape (N, ...) that ends in {shape}, got "
            f"{tuple(X.shape)}; to normalize each example whole, use normalized_shape=X.shape[1:]."
        )
    eps = _check_eps(eps)
    dims = tuple(range(X.dim() - len(shape), X.dim()))
    mean = X.mean(dim=dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as in the formula
    Y = (X - mean) / torch.sqrt(var + eps)
    Y = Y if weight is None else Y * weight
    return Y if bias is None else Y + bias


# notebooks/01_batch_norm.ipynb, cell 122
def _to_shape(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` (an int, or a tuple, list or torch.Size of ints) as a tuple of positive ints."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    if not isinstance(shape, tuple | list) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in shape
    ):
        raise TypeError(
            "normalized_shape must be an int or a tuple of ints, the last dimensions to normalize over "
            f"(all of an example's: LayerNorm(X.shape[1:])), got {normalized_shape!r}; "
            "eps goes by name: eps=..."
        )
    if not shape or min(shape) < 1:
        raise ValueError(f"normalized_shape must be positive sizes, one or more, got {tuple(shape)}.")
    return tuple(int(n) for n in shape)


# notebooks/01_batch_norm.ipynb, cell 123
class LayerNorm(nn.Module):
    """Layer normalization (Ba, Kiros & Hinton, 2016) from scratch; equals nn.LayerNorm.

    Args (``nn.LayerNorm``'s, in its order):
        normalized_shape: the last dimensions to normalize over, an int or a tuple; all of an
            example's: ``LayerNorm(X.shape[1:])``.
        eps: added to the variance, >= 0.
        elementwise_affine: learn a scale ``weight`` (ones at first) and a shift ``bias`` (zeros).
        bias: learn the shift too (with ``elementwise_affine``).

    Parameters ``weight`` and ``bias`` have the shape ``normalized_shape``, as in PyTorch.
    Shapes: (N, ..., *normalized_shape) -> the same.
    """

    def __init__(
        self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True
    ):
        super().__init__()
        self.normalized_shape, self.eps = _to_shape(normalized_shape), _check_eps(eps)
        for name, flag in (("elementwise_affine", elementwise_affine), ("bias", bias)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}; pass eps by name: eps=...")
        self.elementwise_affine = elementwise_affine
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if elementwise_affine and bias else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return layer_norm(X, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

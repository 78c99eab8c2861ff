# Generated from notebooks/01_batch_norm.ipynb by tools/export.py.
# Do not edit: change the notebook and run `make export`.


"""01 · Batch normalization and layer normalization, shown rather than told

The definitions saved from notebooks/01_batch_norm.ipynb.
"""

import copy

import torch
from d2l import torch as d2l
from torch import nn


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


class BatchNorm(nn.Module):
    """Batch normalization (Ioffe & Szegedy, 2015) from scratch; equals nn.BatchNorm1d/2d.

    Unlike the book's layer, the running statistics are registered buffers (in ``state_dict``, moved
    by ``.to()``), the mode follows ``self.training`` (``.train()``/``.eval()``) rather than
    ``torch.is_grad_enabled()``, and ``momentum`` has PyTorch's meaning and default.

    Args:
        num_features: outputs of a fully connected layer, or channels of a convolution.
        num_dims: 2 for a fully connected layer, 4 for a convolutional one.
        eps: added to the variance.
        momentum: weight of the new batch in the running estimates; None: cumulative average.

    Shapes: (N, num_features) if num_dims == 2, else (N, num_features, H, W); output the same.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (fully connected) or 4 (convolution), got {num_dims!r}.")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features, self.num_dims, self.eps, self.momentum = num_features, num_dims, eps, momentum
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


@d2l.add_to_class(BatchNorm)
def forward(self, X: torch.Tensor) -> torch.Tensor:
    if X.dim() != self.num_dims or X.shape[1] != self.num_features:
        want = "(N, C)" if self.num_dims == 2 else "(N, C, H, W)"
        raise ValueError(
            f"BatchNorm({self.num_features}, num_dims={self.num_dims}) expects {want} input with "
            f"C={self.num_features}, got shape {tuple(X.shape)}; match num_features and num_dims to the "
            "layer before it."
        )
    momentum = self.momentum
    if self.training and momentum is None:  # cumulative average over the batches seen so far
        momentum = 1.0 / (int(self.num_batches_tracked) + 1)
    Y, self.moving_mean, self.moving_var = batch_norm(
        X, self.gamma, self.beta, self.moving_mean, self.moving_var,
        eps=self.eps, momentum=momentum, training=self.training,
    )  # fmt: skip
    if self.training:
        self.num_batches_tracked += 1
    return Y


@d2l.add_to_class(BatchNorm)
def extra_repr(self) -> str:
    return f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}"


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


class ActivationRecorder:
    """Per-unit mean and standard deviation of some layers' outputs, recorded at every training step.

    A unit is a channel of a convolution's output (statistics over batch, height and width) or a
    feature of a fully connected layer's (over the batch). Only training-mode passes on at least
    ``min_batch`` examples count, which skips the Trainer's initializing pass on two examples.

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
    ``batch_size - 1`` random companions from ``pool``. The model's state is left as it was.

    Shapes: x (C, H, W), pool (M, C, H, W) -> (num_batches, num_classes).
    """
    state, was_training = copy.deepcopy(model.state_dict()), model.training
    gen, outputs = torch.Generator().manual_seed(seed), []
    model.train()
    try:
        for _ in range(num_batches):
            companions = pool[torch.randperm(len(pool), generator=gen)[: batch_size - 1]]
            outputs.append(model(torch.cat([x[None], companions]))[0].softmax(-1))
    finally:
        model.load_state_dict(state)
        model.train(was_training)
    return torch.stack(outputs)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (PyTorch's and ours), in the order they were registered."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm)]


@torch.no_grad()
def bn_inputs(model: nn.Module, X: torch.Tensor) -> list[torch.Tensor]:
    """The input of every batch-norm layer of ``model`` for the examples ``X``, in eval mode."""
    inputs, was_training = [], model.training
    handles = [m.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for m in bn_layers(model)]
    try:
        model.eval()(X)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
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


@torch.no_grad()
def exact_bn_statistics(model: nn.Module, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Replace every BN layer's running estimates with the exact mean and variance of its input
    over all of ``loader``, layer by layer in eval mode; returns them as (mean, var) per layer.

    The variance is the biased one of all N (or N * H * W) values; with that many values the
    unbiased one differs by a factor 1 + 1/(n - 1), below float32 resolution here.
    """
    stats, was_training = [], model.training
    model.eval()
    for bn in bn_layers(model):
        totals = [0, 0.0, 0.0]  # count, sum, sum of squares, accumulated batch by batch

        def measure(module, args, totals=totals):
            # Accumulate rather than keep each batch's moments: keeping them held every batch's
            # activations alive (several GB over the training set).
            for i, t in enumerate(_moments(args[0])):
                totals[i] = totals[i] + t
            raise _StopForward  # the layers after this one are not needed yet

        handle = bn.register_forward_pre_hook(measure)
        for X, _ in loader:
            try:
                model(X)
            except _StopForward:
                pass
        handle.remove()
        n, s1, s2 = totals
        mean, var = s1 / n, s2 / n - (s1 / n) ** 2
        running = (
            (bn.running_mean, bn.running_var)
            if hasattr(bn, "running_mean")
            else (bn.moving_mean, bn.moving_var)
        )
        running[0].copy_(mean.view_as(running[0])), running[1].copy_(var.view_as(running[1]))
        stats.append((mean.float(), var.float()))
    model.train(was_training)
    return stats


def _moments(X: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, sum and sum of squares per channel (float64), over the batch and any positions."""
    dims = (0,) if X.dim() == 2 else (0, 2, 3)
    X = X.double()
    return X.numel() // X.shape[1], X.sum(dim=dims), (X * X).sum(dim=dims)


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


def layer_norm(X: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization (Ba, Kiros & Hinton, 2016) without the affine part: each example is
    standardized over all its elements. Shapes: (N, ...) -> the same."""
    if X.dim() < 2:
        raise ValueError(f"layer_norm needs a batch axis and at least one more, got shape {tuple(X.shape)}.")
    dims = tuple(range(1, X.dim()))
    mean = X.mean(dim=dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
    return (X - mean) / torch.sqrt(var + eps)


class LayerNorm(nn.Module):
    """Layer normalization (Ba, Kiros & Hinton, 2016) without learned parameters; see `layer_norm`."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return layer_norm(X, self.eps)

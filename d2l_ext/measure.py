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


class ActivationRecorder:
    """Per-unit mean and standard deviation of some layers' outputs, recorded at every training step.

    A unit is a channel of a convolution's output (statistics over batch, height and width) or a
    feature of a fully connected layer's (over the batch). Only training-mode passes on at least
    ``min_batch`` examples count, which skips the Trainer's initializing pass on two examples.
    Use it as a context, ``with ActivationRecorder(layers) as recorder: fit(cfg, model, data,
    records=[recorder])``, so that its hooks are removed even when the training fails or is
    interrupted, and its recordings are stored with the run and restored when the run is replayed.

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

    def __enter__(self) -> ActivationRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def curves(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For each layer, (means, stds), each of shape (steps, units)."""
        return {name: (torch.stack(self.means[name]), torch.stack(self.stds[name])) for name in self.means}

    def state_dict(self) -> dict[str, dict[str, list[torch.Tensor]]]:
        """What was recorded, for storing with the run (`d2l_ext.runs.fit`)."""
        return {"means": self.means, "stds": self.stds}

    def load_state_dict(self, state: dict[str, dict[str, list[torch.Tensor]]]) -> None:
        """Take the recordings of a stored run (its layers must be this recorder's)."""
        if set(state["means"]) != set(self.means):
            stored, here = sorted(state["means"]), sorted(self.means)
            raise ValueError(f"The stored recordings are of layers {stored}, not of this recorder's {here}.")
        self.means = {name: list(v) for name, v in state["means"].items()}
        self.stds = {name: list(v) for name, v in state["stds"].items()}


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
    ``batch_size - 1`` random companions from ``pool``. The model's state and every submodule's
    mode are left as they were, also when a forward pass raises.

    Shapes: x (C, H, W), pool (M, C, H, W) -> (num_batches, num_classes).
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN's running estimates move
    gen, outputs = torch.Generator().manual_seed(seed), []
    with train_mode(model):
        try:
            for _ in range(num_batches):
                companions = pool[torch.randperm(len(pool), generator=gen)[: batch_size - 1]]
                outputs.append(model(torch.cat([x[None], companions]))[0].softmax(-1))
        finally:
            model.load_state_dict(state)
    return torch.stack(outputs)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (PyTorch's and ours), in the order they were registered."""
    from d2l_ext.batch_norm import BatchNorm  # here: importing measure need not import d2l

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | BatchNorm)]


@torch.no_grad()
def bn_inputs(model: nn.Module, X: torch.Tensor) -> list[torch.Tensor]:
    """The input of every batch-norm layer of ``model`` for the examples ``X``, in eval mode."""
    inputs = []
    handles = [m.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for m in bn_layers(model)]
    try:
        with eval_mode(model):
            model(X)
    finally:
        for handle in handles:
            handle.remove()
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


def _running_stats(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BN layer's running mean and variance: PyTorch's names, or our BatchNorm's."""
    if hasattr(bn, "running_mean"):
        return bn.running_mean, bn.running_var
    return bn.moving_mean, bn.moving_var


def _moments(X: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, sum and sum of squares per channel (float64), over the batch and any positions."""
    dims = (0,) if X.dim() == 2 else (0, 2, 3)
    X = X.double()
    return X.numel() // X.shape[1], X.sum(dim=dims), (X * X).sum(dim=dims)


def _input_moments(model: nn.Module, bn: nn.Module, loader) -> list:
    """`_moments` of the input of ``bn`` over all of ``loader``; each pass stops at ``bn``."""
    totals = [0, 0.0, 0.0]  # count, sum, sum of squares, accumulated batch by batch

    def measure(module, args):
        # Accumulate rather than keep each batch's moments: keeping them held every batch's
        # activations alive (several GB over the training set).
        for i, t in enumerate(_moments(args[0])):
            totals[i] = totals[i] + t
        raise _StopForward  # the layers after this one are not needed yet

    handle = bn.register_forward_pre_hook(measure)
    try:
        for X, _ in loader:
            try:
                model(X)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return totals


def exact_bn_statistics(
    model: nn.Module, loader, *, recompute: bool | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Replace every BN layer's running estimates with the exact mean and variance of its input
    over all of ``loader``, layer by layer in eval mode; returns them as (mean, var) per layer.

    The variance is stored in PyTorch's convention for ``running_var``: the unbiased one of all n
    values per channel (n = N, or N * H * W), n / (n - 1) times the biased one. That factor is
    1 + 1/(n - 1): for a fully connected layer on the 60,000 training images, 1 + 1.7e-5, about 140
    times float32's machine epsilon, so the two conventions differ measurably. If a pass fails or is
    interrupted, every running estimate is put back as it was, and every mode.

    A pass per BN layer over the training set takes seconds on a laptop, so, like a training, the
    result is kept in the run cache (`d2l_ext.runs.measure_once`), keyed by the model's code, every
    weight and buffer, and the loader's data and order: the same call on the same weights replays
    it, leaves the model exactly as computing would, and says so in one line. ``recompute=True``
    (or ``D2L_EXT_RETRAIN=1``) computes afresh.

    Shapes: each mean and var (C,), float32, for a layer of C features or channels.
    """
    from d2l_ext.runs import measure_once  # here, not above: d2l_ext.runs imports this module

    return measure_once(_exact_bn_statistics, model, loader, name="exact_bn_statistics", recompute=recompute)


@torch.no_grad()
def _exact_bn_statistics(model: nn.Module, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`exact_bn_statistics`, computed."""
    layers = bn_layers(model)
    before = [tuple(t.clone() for t in _running_stats(bn)) for bn in layers]
    stats = []
    with eval_mode(model):
        try:
            for bn in layers:
                n, s1, s2 = _input_moments(model, bn, loader)
                mean, var = s1 / n, (s2 / n - (s1 / n) ** 2) * (n / (n - 1))  # unbiased
                for running, exact in zip(_running_stats(bn), (mean, var)):
                    running.copy_(exact.view_as(running))
                stats.append((mean.float(), var.float()))
        except BaseException:
            # Half the layers on exact statistics and half on running ones would be neither.
            for bn, saved in zip(layers, before):
                for running, old in zip(_running_stats(bn), saved):
                    running.copy_(old)
            raise
    return stats


class GhostBatchNorm(nn.Module):
    """A PyTorch BN layer whose training-mode statistics come from groups of ``size`` examples.

    "Ghost batches" (Hoffer, Hubara & Soudry, 2017): the minibatch of N examples is cut into N / size
    consecutive groups, and each group is normalized with its own mean and biased variance, as a
    minibatch of ``size`` would be, while the optimizer still takes one step on all N. Changing
    ``size`` changes only the noise of BN's statistics. The running estimates are updated once per
    step, with ``bn.momentum``, by the average over the groups of their means and unbiased variances.
    Eval mode is ``bn``'s. Shapes: (N, C) or (N, C, H, W), N a multiple of ``size``; output the same.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, size: int):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2 (a group of one has no variance), got {size!r}.")
        self.bn, self.size = bn, size
        self.train(bn.training)  # a new module trains by default; keep the mode of the layer it wraps

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(X)
        N, C, rest = X.shape[0], X.shape[1], X.shape[2:]
        if N % self.size:
            raise ValueError(
                f"a batch of {N} examples does not split into ghost batches of {self.size}: use a batch "
                "size that is a multiple of it (and a training set that is a multiple of the batch size)."
            )
        G = N // self.size
        # (N, C, ...) -> (size, G * C, ...): each (group, channel) pair becomes a channel of its own.
        Xg = X.reshape(G, self.size, C, *rest).transpose(0, 1).reshape(self.size, G * C, *rest)
        bn = self.bn
        Y = nn.functional.batch_norm(
            Xg, None, None, bn.weight.repeat(G), bn.bias.repeat(G), True, 0.0, bn.eps
        )
        with torch.no_grad():
            dims = [0] + list(range(2, Xg.dim()))
            mean = Xg.mean(dim=dims).view(G, C).mean(0)
            var = Xg.var(dim=dims).view(G, C).mean(0)  # unbiased, as PyTorch keeps it
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
            bn.running_var.lerp_(var.to(bn.running_var.dtype), bn.momentum)
            bn.num_batches_tracked += 1
        return Y.reshape(self.size, G, C, *rest).transpose(0, 1).reshape(X.shape)


def ghost_batches(model: nn.Module, size: int) -> nn.Module:
    """``model`` with every PyTorch BN layer of ``model.net`` wrapped in a `GhostBatchNorm` of ``size``."""
    layers = [i for i, m in enumerate(model.net) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or any(has_lazy(model.net[i]) for i in layers):
        raise ValueError(
            "ghost_batches needs a model.net with materialized PyTorch BN layers: call the model "
            "once on a batch (model(X[:2])) before wrapping them."
        )
    for i in layers:
        model.net[i] = GhostBatchNorm(model.net[i], size)
    return model


__all__ += [
    "ActivationRecorder",
    "GhostBatchNorm",
    "batch_stat_noise",
    "bn_inputs",
    "bn_layers",
    "companion_outputs",
    "exact_bn_statistics",
    "ghost_batches",
    "sigmoid_inputs",
]

# -- 02 · ResNet ----------------------------------------------------------------------------------


def conv_grad_rms(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-parameter RMS of the loss gradient w.r.t. the weight of every convolution of ``net``
    except the 1x1 ones, input side first, for one minibatch ``X`` (N, C, H, W) with labels ``y`` (N,).

    The RMS, ``grad.norm() / grad.numel() ** 0.5``, does not grow with the layer's size, so layers
    of 1 -> 16 and 64 -> 64 channels compare directly (their norms would not: the second has 256
    times as many weights). The 1x1 (shortcut) convolutions are left out, so that a ResNet and its
    PlainNet give lists of the same length. Computed as in a training step, in training mode (BN
    normalizes with the minibatch's statistics and updates its running ones); every submodule's
    mode comes back afterwards. ``net`` needs the ``loss`` of a ``d2l.Classifier``; its ``.grad``
    are overwritten.
    """
    with train_mode(net):
        net.zero_grad()
        net.loss(net(X), y).backward()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return [(m.weight.grad.norm() / m.weight.grad.numel() ** 0.5).item() for m in convs]


def init_grad_rms(
    Net: type[nn.Module],
    num_residuals: int,
    widths: tuple[int, ...],
    X: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    **kwargs,
) -> list[float]:
    """`conv_grad_rms` at initialization of ``Net(arch, **kwargs)``, with ``num_residuals`` blocks in
    each stage of ``widths`` channels, initialized as `Trainer` does (Xavier, ``d2l.init_cnn``).

    Seeded with ``seed``, in a forked random state: the caller's generator is left as it was.
    """
    from d2l import torch as d2l

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net(tuple((num_residuals, w) for w in widths), **kwargs)
        net.apply_init([X[:2]], d2l.init_cnn)
    return conv_grad_rms(net, X, y)


def residual_parts(blk: nn.Module, X: torch.Tensor):
    """``(g, s, join)`` for a residual block and its input ``X`` (N, C, H, W): the branch's output
    ``g`` (N, C', H', W'), the shortcut's ``s`` (same shape) and the function with
    ``join(g, s) == blk(X)``.

    The book's `Residual` joins with ReLU(g + s), its shortcut ``s`` being ``X`` or the 1x1
    convolution of ``X``; `PreActResidual` (He et al., 2016b) joins with g + X. Each layer runs once,
    in the block's current mode.
    """
    from torch.nn import functional as F

    kind = _residual_kind(blk)
    if kind == "PreActResidual":
        g = blk.conv2(F.relu(blk.bn2(blk.conv1(F.relu(blk.bn1(X))))))
        return g, X, torch.add
    if kind == "Residual":
        g = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(X)))))
        s = X if blk.conv3 is None else blk.conv3(X)
        return g, s, lambda g, s: F.relu(g + s)
    raise TypeError(f"residual_parts takes a Residual or a PreActResidual block; got {type(blk).__name__}.")


def _residual_kind(m: nn.Module) -> str | None:
    # By class name, not isinstance: a notebook's own Residual (the one the exporter copies into
    # d2l_ext.resnet) is another class object with the same layers. PlainBlock has no shortcut.
    names = [c.__name__ for c in type(m).__mro__]
    if "PlainBlock" in names:
        return None
    return next((n for n in names if n in ("PreActResidual", "Residual")), None)


def shortcut_gradient(blk: nn.Module, X: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The part of dL/dX that reaches the input ``X`` (N, C, H, W) of a residual block through its
    shortcut, given the gradient ``grad_out`` = dL/d blk(X): dL/dX minus the part through the branch.

    For an identity shortcut it is ``grad_out`` itself if nothing follows the addition, and
    ``grad_out`` times the ReLU's 0/1 mask if a ReLU does (the book's block).
    """
    X = X.detach().requires_grad_()
    g, s, join = residual_parts(blk, X)
    (full,) = torch.autograd.grad(join(g, s), X, grad_out, retain_graph=True)
    (through_branch,) = torch.autograd.grad(join(g, s.detach()), X, grad_out)
    return full - through_branch


def branch_ratios(net: nn.Module, X: torch.Tensor) -> list[float]:
    """||g(x)|| / ||s(x)|| for every residual block of ``net`` (input side first) on the minibatch
    ``X``: how large the branch's output is against the shortcut's it is added to.

    Measured in eval mode (every submodule's mode comes back afterwards), without gradients, on
    the device of ``net``'s parameters.
    """
    blocks = [m for m in net.modules() if _residual_kind(m)]
    X = X.to(next(net.parameters()).device)
    if not blocks:
        raise ValueError(f"{type(net).__name__} has no Residual or PreActResidual block to measure.")
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda b, args: inputs.__setitem__(b, args[0])) for b in blocks]
    try:
        with torch.no_grad(), eval_mode(net):
            net(X)
            parts = [residual_parts(b, inputs[b])[:2] for b in blocks]
    finally:
        for h in hooks:
            h.remove()
    return [(g.norm() / s.norm()).item() for g, s in parts]


def final_loss(losses: list[float], frac: float = 0.1) -> float:
    """Mean of the last ``frac`` of ``losses`` (one per step, at least the last one): where a run
    ended, with less noise than its last step alone."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac is the fraction of the steps to average, in (0, 1]; got {frac!r}.")
    if len(losses) == 0:
        raise ValueError("final_loss got no losses; did the run take any steps (max_steps > 0)?")
    k = max(1, int(frac * len(losses)))
    return sum(losses[-k:]) / k


__all__ += [
    "branch_ratios",
    "conv_grad_rms",
    "final_loss",
    "init_grad_rms",
    "residual_parts",
    "shortcut_gradient",
]

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


# The operations whose order tells a block's design apart, by their names in torch.
_LAYER_OPS = {"conv2d": "conv", "batch_norm": "BN", "relu": "ReLU", "add": "add", "add_": "add"}
_LAYER_OPS |= {"cat": "cat", "avg_pool2d": "avg-pool", "max_pool2d": "max-pool", "linear": "linear"}
_LAYER_OPS |= {"adaptive_avg_pool2d": "global-avg-pool"}  # the heads' nn.AdaptiveAvgPool2d((1, 1))


class _OpRecorder(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = (torch.overrides.resolve_name(func) or "").rsplit(".", 1)[-1]
        if name in _LAYER_OPS:
            self.ops.append(_LAYER_OPS[name])
        return func(*args, **(kwargs or {}))


def op_order(net: nn.Module, X: torch.Tensor) -> list[str]:
    """The layer operations that ``net`` runs on ``X`` (N, C, H, W), in the order it runs them.

    Names are "conv", "BN", "ReLU", "add", "cat", "avg-pool", "max-pool", "global-avg-pool" and
    "linear". They are read through torch's function overrides (`torch.overrides.TorchFunctionMode`),
    so a functional call in ``forward`` (``F.relu(Y)``, ``Y += X``) counts as well as a module. Runs
    in eval mode, without gradients, so that BN's counter of batches (an add) is not counted and its
    statistics stay put.
    """
    _materialize(net, X)
    with eval_mode(net), torch.no_grad(), _OpRecorder() as recorder:
        net(X)
    return recorder.ops


__all__ += ["densenet_num_params", "op_order"]

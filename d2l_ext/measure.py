"""Measuring tools shared by the notebooks: modes, parameter and FLOP counts, shapes, memory, time,
per-layer activation statistics, the order of a model's operations.

The ground floor of d2l_ext: it imports torch only, and every other module may import it. Each
topic's own measurements and figures live next to it (`d2l_ext.batch_norm_tools`, ...). Every tool
that needs a model in eval mode uses `eval_mode`, which puts every submodule back in its own mode
afterwards, also when the measurement fails or is interrupted (Ctrl-C in a notebook).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ActivationRecorder",
    "count_flops",
    "eval_mode",
    "has_lazy",
    "num_params",
    "op_order",
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

"""Measuring tools that several notebooks share, the ground floor of d2l_ext (it imports torch only).
Each tool that runs a model in another mode puts every submodule back in its own mode afterwards,
also when the pass fails or is interrupted."""

import contextlib
import functools
import timeit

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ActivationRecorder", "count_flops", "eval_mode", "has_lazy", "num_params"]
__all__ += ["op_order", "saved_activation_bytes", "stage_shapes", "time_forward", "train_mode"]


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool):
    # Each submodule's own flag comes back, not the parent's: BN layers frozen in eval mode inside a
    # training model stay frozen.
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, training_before in modes:
            m.training = training_before


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``with eval_mode(net): ...`` runs ``net`` in eval mode, then restores every submodule's mode."""
    return _mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Like `eval_mode`, for training mode (BN uses and updates batch statistics)."""
    return _mode(model, True)


def has_lazy(model: nn.Module) -> bool:
    """True while a Lazy layer of ``model`` has not had its first call."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


def _materialize(net: nn.Module, *inputs: torch.Tensor) -> None:
    # One call in eval mode gives Lazy layers their shapes and leaves BN's statistics untouched.
    if has_lazy(net):
        if not inputs:
            raise ValueError(
                f"{type(net).__name__} has Lazy layers without shapes yet; pass an example input, "
                "e.g. num_params(net, torch.zeros(1, 1, 28, 28))."
            )
        with eval_mode(net), torch.no_grad():
            net(*inputs)


def num_params(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Number of parameters of ``net``; ``inputs`` give Lazy layers their shapes first."""
    _materialize(net, *inputs)
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of ``net(*inputs)`` in eval mode: 2 per multiply-add of convolutions and matmuls."""
    with eval_mode(net), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*inputs)
    return counter.get_total_flops()


def stage_shapes(net: nn.Module, X: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every top-level stage of ``net.net`` for ``X``, in eval mode (one image will do)."""
    shapes = {}
    with eval_mode(net), torch.no_grad():
        for name, layer in net.net.named_children():
            X = layer(X)
            shapes[name] = tuple(X.shape)
    return shapes


def saved_activation_bytes(net: nn.Module, X: torch.Tensor) -> int:
    """Bytes that autograd saves for backward in one training pass of ``net`` on ``X``, each storage
    once; parameters and buffers, which the model keeps anyway, do not count."""
    _materialize(net, X)
    kept = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    # The graph holds every saved tensor until the pass ends, so no freed address is counted again.
    with train_mode(net), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(X)
    return sum(saved.values())


def time_forward(net: nn.Module, X: torch.Tensor, repeat: int = 10) -> float:
    """Seconds of ``net(X)`` without autograd: the fastest of ``repeat`` calls after a warm-up (the
    minimum, not the mean: other programs on the machine can only add time)."""
    with torch.no_grad():
        net(X)
        return min(timeit.repeat(lambda: net(X), number=1, repeat=repeat))


class ActivationRecorder(contextlib.AbstractContextManager):
    """Per-unit (channel or feature) mean and standard deviation of the outputs of ``layers`` (a name
    for each module) at every training step. Use it as a context around `fit` (``records=[recorder]``):
    its hooks go even if training is interrupted, and a replayed run restores its recordings."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.steps: dict[str, list[torch.Tensor]] = {name: [] for name in layers}  # per step: (2, units)
        self.handles = [
            m.register_forward_hook(functools.partial(self._record, name)) for name, m in layers.items()
        ]

    def _record(self, name, module, inputs, Y):
        if module.training and len(Y) >= 8:  # not the Trainer's initializing pass on two examples
            Y = Y.detach().float()
            dims = [0, *range(2, Y.dim())]
            self.steps[name].append(torch.stack([Y.mean(dim=dims), Y.std(dim=dims)]))

    def __exit__(self, *exc_info):
        for handle in self.handles:
            handle.remove()

    def curves(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For each layer, (means, stds), each of shape (steps, units)."""
        return {name: tuple(torch.stack(steps).unbind(1)) for name, steps in self.steps.items()}

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return self.steps

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        if set(state) != set(self.steps):
            raise ValueError(
                f"The stored recordings are of layers {sorted(state)}, not {sorted(self.steps)}."
            )
        self.steps = {name: list(steps) for name, steps in state.items()}


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
    """The layer operations that ``net`` runs on ``X``, in order: "conv", "BN", "ReLU", "add", "cat",
    "avg-pool", "max-pool", "global-avg-pool", "linear".

    Read through torch's function overrides, so that a functional call (``F.relu(Y)``, ``Y += X``)
    counts as well as a module; in eval mode, so that BN's counter of batches (an add) does not.
    """
    _materialize(net, X)
    with eval_mode(net), torch.no_grad(), _OpRecorder() as recorder:
        net(X)
    return recorder.ops

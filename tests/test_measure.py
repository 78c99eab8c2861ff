"""d2l_ext.measure: modes that always come back, and counts checked against hand arithmetic; every
measuring tool of d2l_ext puts the model back as it was, also when its forward pass raises."""

import contextlib
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2l_ext.batch_norm_tools import bn_inputs, companion_outputs, exact_bn_statistics
from d2l_ext.measure import (
    count_flops,
    eval_mode,
    has_lazy,
    num_params,
    op_order,
    saved_activation_bytes,
    stage_shapes,
    time_forward,
    train_mode,
)


class Raising(nn.Module):
    """Passes its input through, or raises ``error`` (a bad batch, a Ctrl-C) if given one."""

    def __init__(self, error=None):
        super().__init__()
        self.error = error

    def forward(self, X):
        if self.error is not None:
            raise self.error("raised inside the forward pass")
        return X


class Staged(nn.Module):
    """A model with named stages in ``net``, training but for a frozen BN (eval mode); ``error`` comes
    after the first BN layer, so that `exact_bn_statistics` fails with that layer's estimates set."""

    def __init__(self, error=None):
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), Raising(error), nn.BatchNorm2d(4)
        )
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.net = nn.Sequential(OrderedDict(stem=stem, head=head))
        self.net.stem[3].eval()

    def forward(self, X):
        return self.net(X)


def modes(net):
    return [m.training for m in net.modules()]


@pytest.mark.parametrize("manager, inside", [(eval_mode, False), (train_mode, True)])
@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt])
def test_modes_switch_every_submodule_then_restore_each_one(manager, inside, error):
    net = Staged()
    before = modes(net)
    with pytest.raises(error) if error else contextlib.nullcontext(), manager(net) as same:
        assert same is net and all(m.training is inside for m in net.modules())
        if error:
            raise error()
    assert modes(net) == before and not net.net.stem[3].training


TOOLS = {  # a tool and when it leaves the model's state (BN's running statistics) as it was
    "count_flops": (count_flops, "always"),
    "stage_shapes": (stage_shapes, "always"),
    "op_order": (op_order, "always"),
    "saved_activation_bytes": (saved_activation_bytes, "never"),  # a training pass: they move
    "bn_inputs": (bn_inputs, "always"),
    "companion_outputs": (lambda net, X: companion_outputs(net, X[0], X[1:], 2, num_batches=2), "always"),
    "exact_bn_statistics": (lambda net, X: exact_bn_statistics(net, [(X, None), (X, None)]), "on failure"),
}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt])
def test_tools_restore_each_submodules_mode_and_hooks_also_when_the_forward_raises(tool, error):
    net = Staged(error)
    (measure, keeps), before = TOOLS[tool], modes(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match="raised inside") if error else contextlib.nullcontext():
        measure(net, torch.randn(3, 1, 9, 9))
    assert modes(net) == before
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0
    if keeps == "always" or (error and keeps == "on failure"):  # no running estimate half replaced
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_count_flops_is_two_per_multiply_add():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3))
    assert count_flops(net, torch.randn(5, 2, 7, 7)) == 2 * 5 * 7 * 7 * 3 * 2 * 3 * 3


def test_num_params_materializes_lazy_layers_or_says_what_to_pass():
    net = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    assert has_lazy(net)
    with pytest.raises(ValueError, match="example input"):
        num_params(net)
    assert num_params(net, torch.zeros(2, 3)) == 3 * 4 + 4 + 2 * 4
    assert not has_lazy(net) and net.training


def test_stage_shapes_takes_one_image():
    assert stage_shapes(Staged(), torch.zeros(1, 1, 9, 9)) == {"stem": (1, 4, 4, 4), "head": (1, 4)}


def test_saved_activation_bytes_counts_what_backward_keeps():
    # A bias-free Linear saves its input for the weight's gradient: 8 x 16 float32 = 512 bytes.
    net = nn.Sequential(nn.Linear(16, 4, bias=False)).eval()
    assert saved_activation_bytes(net, torch.randn(8, 16)) == 8 * 16 * 4
    # A conv saves its input (and its weight, a parameter: not counted); ReLU saves its output.
    net, X = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), torch.randn(2, 1, 6, 6)
    assert saved_activation_bytes(net, X) == X.nbytes + 2 * 4 * 4 * 4 * 4


def test_op_order_counts_functional_calls():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.LazyConv2d(3, 1), nn.BatchNorm2d(3)

        def forward(self, X):
            return F.max_pool2d(F.relu(self.bn(self.conv(X)) + X), 2)

    assert op_order(Block(), torch.randn(2, 3, 4, 4)) == ["conv", "BN", "add", "ReLU", "max-pool"]


def test_time_forward_is_a_positive_minimum():
    assert time_forward(nn.Linear(4, 4), torch.randn(2, 4), repeat=3) > 0

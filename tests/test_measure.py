"""d2l_ext.measure: modes that always come back, and counts checked against hand arithmetic."""

import pytest
import torch
from torch import nn

from d2l_ext.measure import (
    count_flops,
    eval_mode,
    has_lazy,
    num_params,
    saved_activation_bytes,
    stage_shapes,
    time_forward,
    train_mode,
)


def mixed_modes() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net[1].eval()  # a frozen BN inside a training model
    return net


@pytest.mark.parametrize("manager, inside", [(eval_mode, False), (train_mode, True)])
def test_modes_switch_every_submodule_then_restore_each_one(manager, inside):
    net = mixed_modes()
    with manager(net) as same:
        assert same is net and all(m.training is inside for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_modes_come_back_when_the_block_raises(error):
    net = mixed_modes()
    with pytest.raises(error), eval_mode(net):
        raise error()
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_count_flops_is_two_per_multiply_add_and_leaves_bn_statistics_alone():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3))
    before = net[1].running_mean.clone()
    assert count_flops(net, torch.randn(5, 2, 7, 7)) == 2 * 5 * 7 * 7 * 3 * 2 * 3 * 3
    assert torch.equal(net[1].running_mean, before) and net.training


def test_num_params_materializes_lazy_layers_or_says_what_to_pass():
    net = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    assert has_lazy(net)
    with pytest.raises(ValueError, match="example input"):
        num_params(net)
    assert num_params(net, torch.zeros(2, 3)) == 3 * 4 + 4 + 2 * 4
    assert not has_lazy(net) and net.training


def test_stage_shapes_takes_one_image_in_eval_mode():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential()
            self.net.add_module("stem", nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4)))
            self.net.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))

    net = Net()
    assert stage_shapes(net, torch.zeros(1, 1, 9, 9)) == {"stem": (1, 4, 4, 4), "head": (1, 4)}
    assert net.training and int(net.net.stem[1].num_batches_tracked) == 0


def test_saved_activation_bytes_counts_what_backward_keeps():
    # A bias-free Linear saves its input for the weight's gradient: 8 x 16 float32 = 512 bytes.
    net = nn.Sequential(nn.Linear(16, 4, bias=False))
    net.eval()
    assert saved_activation_bytes(net, torch.randn(8, 16)) == 8 * 16 * 4
    assert not net.training


def test_time_forward_is_a_positive_minimum():
    assert time_forward(nn.Linear(4, 4), torch.randn(2, 4), repeat=3) > 0

"""Tests of d2l_ext.resnet (generated from notebook 02), with torch and torchvision as oracles."""

import math

import pytest
import torch
import torchvision
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext import FashionMNIST
from d2l_ext.presets import PRESETS, experiment
from d2l_ext.resnet import (
    PlainBlock,
    PlainNet,
    Residual,
    ResNet,
    ResNet18,
    StepTrainer,
    conv_grad_norms,
    init_grad_norms,
)

RESNET18_PARAMS = 11_178_378  # the book's ResNet-18, 1 input channel, 10 classes
TORCHVISION_PARAMS = 11_175_370  # torchvision's resnet18(num_classes=10) with a 1-channel conv1


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def materialized(net, shape):
    net.apply_init([torch.zeros(shape)], d2l.init_cnn)
    return net


def num_params(net):
    return sum(p.numel() for p in net.parameters())


def torchvision_resnet18():
    ref = torchvision.models.resnet18(num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return ref


def randomize_bn(net):
    """BN statistics and affine parameters that are not the identity, so that copying them matters."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def to_torchvision(model):
    """torchvision's ResNet-18 computing, in eval mode, what our ResNet-18 ``model`` computes.

    A convolution bias followed by BN folds into BN's running mean (BN(Wx + b) with mean m is BN(Wx)
    with mean m - b); the 1x1 shortcut's bias goes into torchvision's shortcut BN, set to x + b.
    """
    ref, net = torchvision_resnet18(), model.net
    pairs = [(ref.conv1, ref.bn1, net[0][0], net[0][1])]
    for ref_stage, stage in zip((ref.layer1, ref.layer2, ref.layer3, ref.layer4), list(net)[1:-1]):
        for ref_blk, blk in zip(ref_stage, stage, strict=True):
            pairs += [
                (ref_blk.conv1, ref_blk.bn1, blk.conv1, blk.bn1),
                (ref_blk.conv2, ref_blk.bn2, blk.conv2, blk.bn2),
            ]
            assert (ref_blk.downsample is None) == (blk.conv3 is None)
            if blk.conv3 is not None:
                conv, bn = ref_blk.downsample
                conv.weight.data.copy_(blk.conv3.weight.data)
                bn.weight.data.fill_(1)
                bn.bias.data.copy_(blk.conv3.bias.data)
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
    for ref_conv, ref_bn, conv, bn in pairs:
        ref_conv.weight.data.copy_(conv.weight.data)
        ref_bn.load_state_dict(bn.state_dict())
        ref_bn.running_mean -= conv.bias.data
    ref.fc.load_state_dict(net[-1][-1].state_dict())
    return ref.eval()


# -- the residual block ---------------------------------------------------------------------
@pytest.mark.parametrize("strides", [1, 2, 3])
@pytest.mark.parametrize("c_in, c_out", [(3, 3), (3, 6), (8, 4)])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_residual_shapes_with_1x1conv(strides, c_in, c_out, hw):
    X = torch.randn(2, c_in, *hw)
    Y = Residual(c_out, use_1x1conv=True, strides=strides)(X)
    assert Y.shape == (2, c_out, math.ceil(hw[0] / strides), math.ceil(hw[1] / strides))


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1)])
def test_residual_without_1x1conv_keeps_the_shape(hw):
    X = torch.randn(4, 3, *hw)
    assert Residual(3)(X).shape == X.shape


def test_lecture_shape_check():
    assert Residual(6, use_1x1conv=True, strides=2)(torch.randn(4, 3, 6, 6)).shape == (4, 6, 3, 3)


def test_residual_equals_its_formula_in_torch_functional():
    blk = Residual(5, use_1x1conv=True, strides=2)
    X = torch.randn(3, 2, 9, 9)
    Y = blk(X)

    def bn(Z, m):  # training mode: statistics of the minibatch
        return F.batch_norm(Z, None, None, m.weight, m.bias, training=True, eps=m.eps)

    Z = F.relu(bn(F.conv2d(X, blk.conv1.weight, blk.conv1.bias, stride=2, padding=1), blk.bn1))
    Z = bn(F.conv2d(Z, blk.conv2.weight, blk.conv2.bias, padding=1), blk.bn2)
    expected = F.relu(Z + F.conv2d(X, blk.conv3.weight, blk.conv3.bias, stride=2))
    torch.testing.assert_close(Y, expected)


def test_residual_parameters_match_torch_layers():
    blk = Residual(6, use_1x1conv=True)
    blk(torch.randn(2, 3, 5, 5))
    expected = (3 * 9 * 6 + 6) + (6 * 9 * 6 + 6) + (3 * 6 + 6) + 2 * (2 * 6)
    assert num_params(blk) == expected


@pytest.mark.parametrize("strides", [2, 3])
def test_stride_without_1x1conv_is_a_clear_error(strides):
    with pytest.raises(
        ValueError, match=rf"strides={strides}\) changes the output shape; pass use_1x1conv=True"
    ):
        Residual(6, strides=strides)


def test_channel_mismatch_without_1x1conv_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Residual\(6\) got an input with 3 channels.*use_1x1conv=True"):
        Residual(6)(torch.randn(4, 3, 6, 6))


# -- identity -------------------------------------------------------------------------------
def zero_branch(blk):
    nn.init.zeros_(blk.bn2.weight)
    nn.init.zeros_(blk.bn2.bias)
    return blk


@pytest.mark.parametrize("train", [True, False])
def test_zero_branch_is_the_identity_on_nonnegative_inputs(train):
    blk = Residual(3)
    X = F.relu(torch.randn(4, 3, 6, 6))
    blk(X)
    zero_branch(blk).train(train)
    assert torch.equal(blk(X), X)


def test_plain_block_with_zero_branch_is_zero():
    blk = PlainBlock(3)
    X = F.relu(torch.randn(4, 3, 6, 6))
    blk(X)
    assert torch.equal(zero_branch(blk)(X), torch.zeros_like(X))


def test_deeper_resnet_contains_the_shallower():
    shallow = materialized(ResNet(((1, 8), (1, 16)), stem_kernel=3, stem_stride=1), (2, 1, 28, 28))
    deep = materialized(ResNet(((3, 8), (3, 16)), stem_kernel=3, stem_stride=1), (2, 1, 28, 28))
    randomize_bn(shallow)
    s, d = shallow.net, deep.net
    d.b1.load_state_dict(s.b1.state_dict())
    d.last.load_state_dict(s.last.state_dict())
    for stage in ("b2", "b3"):
        d.get_submodule(stage)[0].load_state_dict(s.get_submodule(stage)[0].state_dict())
        for blk in d.get_submodule(stage)[1:]:
            zero_branch(blk)
    X = torch.randn(8, 1, 28, 28)
    shallow.eval(), deep.eval()
    torch.testing.assert_close(deep(X), shallow(X), rtol=0, atol=0)


# -- stages and the model -------------------------------------------------------------------
@pytest.mark.parametrize("first_block", [True, False])
@pytest.mark.parametrize("num_residuals", [1, 3])
def test_stage_shapes(first_block, num_residuals):
    model = ResNet(((1, 8),), stem_kernel=3, stem_stride=1)
    c_in = 8 if first_block else 4
    stage = model.block(num_residuals, 8, first_block=first_block)
    Y = stage(torch.randn(2, c_in, 10, 10))
    assert Y.shape == ((2, 8, 10, 10) if first_block else (2, 8, 5, 5))
    assert len(stage) == num_residuals
    assert [blk.conv3 is not None for blk in stage] == [not first_block] + [False] * (num_residuals - 1)


def test_resnet18_stage_shapes_at_96():
    shapes = ResNet18().stage_shapes((1, 1, 96, 96))
    assert shapes == {
        "b1": (1, 64, 24, 24),
        "b2": (1, 64, 24, 24),
        "b3": (1, 128, 12, 12),
        "b4": (1, 256, 6, 6),
        "b5": (1, 512, 3, 3),
        "last": (1, 10),
    }


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_model_output_shapes(preset):
    cfg = experiment("resnet", preset, verbose=False)
    size = cfg.data.get("resize", 28)
    model = ResNet(**cfg.model)
    shapes = model.stage_shapes((2, 1, size, size))
    assert shapes["last"] == (2, 10)
    assert shapes["b1"][1] == cfg.model["arch"][0][1]
    assert model(torch.randn(3, 1, size, size)).shape == (3, 10)


def test_narrow_preset_shapes():
    shapes = ResNet(((1, 16), (1, 32), (1, 64), (1, 128)), stem_kernel=3, stem_stride=1).stage_shapes(
        (1, 1, 28, 28)
    )
    assert [shapes[k] for k in ("b1", "b2", "b3", "b4", "b5")] == [
        (1, 16, 14, 14),
        (1, 16, 14, 14),
        (1, 32, 7, 7),
        (1, 64, 4, 4),
        (1, 128, 2, 2),
    ]


def test_resnet18_is_the_book_arch():
    model = ResNet18(lr=0.05, num_classes=7)
    assert model.arch == ((2, 64), (2, 128), (2, 256), (2, 512))
    assert (model.stem_kernel, model.stem_stride, model.lr) == (7, 2, 0.05)
    stem = model.net.b1[0]
    assert (stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (64, (7, 7), (2, 2), (3, 3))
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch=()), "arch must be"),
        (dict(arch=((2, 64, 1),)), "arch must be"),
        (dict(arch=((0, 64),)), "arch must be"),
        (dict(arch=((1, 16),), stem_kernel=4), "stem_kernel must be odd"),
    ],
)
def test_bad_model_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


# -- torchvision as the reference -----------------------------------------------------------
def test_parameter_count_against_torchvision():
    ours = materialized(ResNet18(), (2, 1, 96, 96))
    ref = torchvision_resnet18()
    assert num_params(ours) == RESNET18_PARAMS
    assert num_params(ref) == TORCHVISION_PARAMS
    conv_biases = sum(m.bias.numel() for m in ours.modules() if isinstance(m, nn.Conv2d))
    shortcut_bn = sum(p.numel() for name, p in ref.named_parameters() if ".downsample.1." in name)
    assert (conv_biases, shortcut_bn) == (4800, 1792)
    assert num_params(ours) - num_params(ref) == conv_biases - shortcut_bn


def test_same_function_as_torchvision_resnet18():
    ours = randomize_bn(materialized(ResNet18(), (2, 1, 64, 64)))
    for m in ours.modules():
        if isinstance(m, nn.Conv2d):
            m.bias.data.uniform_(-0.2, 0.2)
    ours.eval()
    ref = to_torchvision(ours)
    X = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(ref(X), ours(X), rtol=1e-4, atol=1e-4)


# -- the degradation experiment -------------------------------------------------------------
def test_plain_net_differs_only_by_the_shortcuts():
    arch = ((2, 8), (2, 16), (2, 32))
    plain = materialized(PlainNet(arch, stem_kernel=3, stem_stride=2), (2, 1, 28, 28))
    res = materialized(ResNet(arch, stem_kernel=3, stem_stride=2), (2, 1, 28, 28))
    shortcuts = sum(num_params(blk.conv3) for blk in res.modules() if isinstance(blk, Residual) and blk.conv3)
    assert shortcuts == (8 * 16 + 16) + (16 * 32 + 32)
    assert num_params(res) - num_params(plain) == shortcuts
    assert all(blk.conv3 is None for blk in plain.modules() if isinstance(blk, PlainBlock))
    X = torch.randn(2, 1, 28, 28)
    assert plain.stage_shapes(X.shape) == res.stage_shapes(X.shape)


def test_plain_block_strides():
    assert PlainBlock(6, strides=2)(torch.randn(2, 3, 8, 8)).shape == (2, 6, 4, 4)


def test_grad_norms_one_per_conv_and_plain_explodes():
    X, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    kw = dict(stem_kernel=3, stem_stride=2)
    plain = init_grad_norms(PlainNet, 5, (8, 16, 32), X, y, **kw)
    res = init_grad_norms(ResNet, 5, (8, 16, 32), X, y, **kw)
    assert len(plain) == len(res) == 1 + 2 * 5 * 3
    assert all(g > 0 for g in plain + res)
    assert plain[0] / plain[-1] > 5 * res[0] / res[-1]


def test_conv_grad_norms_matches_autograd():
    net = materialized(ResNet(((1, 4),), stem_kernel=3, stem_stride=1), (2, 1, 8, 8))
    X, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    norms = conv_grad_norms(net, X, y)
    weights = [net.net.b1[0].weight, net.net.b2[0].conv1.weight, net.net.b2[0].conv2.weight]
    grads = torch.autograd.grad(F.cross_entropy(net(X), y), weights)
    torch.testing.assert_close(torch.tensor(norms), torch.stack([g.norm() for g in grads]))


def test_step_trainer_records_every_step():
    data = FashionMNIST(batch_size=32, train_subset=320, val_subset=100, verbose=False)
    trainer = StepTrainer(max_epochs=5, max_steps=4, plot=False)
    trainer.fit(ResNet(((1, 4),), stem_kernel=3, stem_stride=2), data)
    assert len(trainer.step_losses) == 4 and all(0 < v < 10 for v in trainer.step_losses)


@pytest.mark.parametrize("preset", PRESETS)
def test_degradation_preset(preset):
    cfg = experiment("degradation", preset, verbose=False)
    shallow, deep = cfg.extra["depths"]
    assert shallow < deep and len(cfg.extra["widths"]) == 3
    assert cfg.trainer["max_steps"] and cfg.trainer["label_smoothing"] == 0
    PlainNet(tuple((deep, w) for w in cfg.extra["widths"]), **cfg.model)


def test_stage_shapes_leaves_mode_and_statistics_alone():
    model = materialized(ResNet(((1, 4),), stem_kernel=3, stem_stride=1), (2, 1, 8, 8))
    before = model.net.b1[1].running_mean.clone()
    model.train()
    assert model.stage_shapes((1, 1, 8, 8))["last"] == (1, 10)  # batch 1 works: BN in eval mode
    assert model.training and torch.equal(model.net.b1[1].running_mean, before)

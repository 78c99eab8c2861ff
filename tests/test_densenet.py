"""Tests of d2l_ext.densenet (generated from notebooks/04_densenet.ipynb), with torch as the oracle."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2l_ext.densenet import (
    DenseBlock,
    DenseNet,
    conv_block,
    count_flops,
    densenet_channels,
    densenet_min_input,
    densenet_num_params,
    densenet_sizes,
    plot_connectivity,
    saved_activation_bytes,
    stage_shapes,
    transition_block,
)
from d2l_ext.presets import EXPERIMENTS, PRESETS, experiment

LECTURE_CHANNELS = [64, 192, 96, 224, 112, 240, 120, 248]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def expected_params(c, k, arch, in_channels=1, stem_kernel=7, num_classes=10):
    """DenseNet's parameter count, layer by layer (weights, biases, BN's gamma and beta)."""
    n = in_channels * c * stem_kernel**2 + c + 2 * c  # stem conv, its BN
    for i, num_convs in enumerate(arch):
        for j in range(num_convs):
            c_in = c + j * k
            n += 2 * c_in + c_in * k * 9 + k  # BN, 3x3 conv
        c += num_convs * k
        if i != len(arch) - 1:
            n += 2 * c + c * (c // 2) + c // 2  # BN, 1x1 conv
            c //= 2
    return n + 2 * c + c * num_classes + num_classes  # BN, linear


def num_params(net):
    return sum(p.numel() for p in net.parameters())


def functional_bn_relu(X, bn):
    return F.relu(F.batch_norm(X, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))


# -- the lecture's checks ---------------------------------------------------------------------


def test_conv_block_keeps_height_and_width():
    assert conv_block(7)(torch.randn(2, 3, 5, 6)).shape == (2, 7, 5, 6)


def test_dense_block_lecture_shape():
    X = torch.randn(4, 3, 8, 8)
    Y = DenseBlock(2, 10)(X)
    assert Y.shape == (4, 3 + 10 + 10, 8, 8)
    assert torch.equal(Y[:, :3], X)  # the input is passed on untouched


def test_transition_block_lecture_shape():
    Y = DenseBlock(2, 10)(torch.randn(4, 3, 8, 8))
    assert transition_block(10)(Y).shape == (4, 10, 4, 4)


def test_dense_block_matches_functional_torch():
    X = torch.randn(4, 3, 8, 8, requires_grad=True)
    blk = DenseBlock(3, 5)
    Y = blk(X)
    Z = X
    for cb in blk.net:
        bn, conv = cb[0], cb[2]
        out = F.conv2d(functional_bn_relu(Z, bn), conv.weight, conv.bias, padding=1)
        Z = torch.cat((Z, out), dim=1)
    torch.testing.assert_close(Y, Z)
    (gY,) = torch.autograd.grad(Y.square().sum(), X)
    (gZ,) = torch.autograd.grad(Z.square().sum(), X)
    torch.testing.assert_close(gY, gZ)


def test_transition_block_matches_functional_torch():
    X = torch.randn(2, 23, 8, 8)
    blk = transition_block(10)
    Y = blk(X)
    bn, conv = blk[0], blk[2]
    expected = F.avg_pool2d(F.conv2d(functional_bn_relu(X, bn), conv.weight, conv.bias), 2)
    torch.testing.assert_close(Y, expected)


def test_lecture_channels_arithmetic():
    assert [c for _, c in densenet_channels(64, 32, (4, 4, 4, 4))] == LECTURE_CHANNELS


def test_densenet_book_input_shapes():
    net = DenseNet()
    shapes = stage_shapes(net, torch.zeros(2, 1, 96, 96))
    assert list(shapes) == ["b1"] + [
        f"{kind}{i}"
        for i in range(1, 5)
        for kind in ("dense_blk", "tran_blk")
        if (kind, i) != ("tran_blk", 4)
    ] + ["last"]
    assert [s[1] for s in shapes.values()][:-1] == LECTURE_CHANNELS
    assert [s[2] for s in list(shapes.values())[:-1]] == [24, 24, 12, 12, 6, 6, 3, 3]
    assert shapes["last"] == (2, 10)
    assert net(torch.randn(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("preset", PRESETS)
def test_densenet_preset_input(preset):
    cfg = experiment("densenet", preset, verbose=False)
    size = cfg.data.get("resize", 28)
    net = DenseNet(**cfg.model)
    assert net(torch.randn(2, 1, size, size)).shape == (2, 10)
    shapes = stage_shapes(net, torch.zeros(1, 1, size, size))
    expected = densenet_channels(cfg.model["num_channels"], cfg.model["growth_rate"], cfg.model["arch"])
    assert [s[1] for s in shapes.values()][:-1] == [c for _, c in expected]


def test_preset_section_has_the_model_knobs():
    for preset in PRESETS:
        model = EXPERIMENTS["densenet"][preset]["model"]
        assert {"num_channels", "growth_rate", "arch", "lr", "stem_kernel", "stem_stride"} <= set(model)


def test_exact_parameter_count():
    net = DenseNet()
    net(torch.zeros(1, 1, 96, 96))
    assert num_params(net) == expected_params(64, 32, (4, 4, 4, 4)) == 758_226


@pytest.mark.parametrize(
    "c, k, arch, kernel, stride",
    [(32, 16, (2, 2, 2, 2), 3, 1), (24, 12, (3, 1, 2), 5, 2), (8, 4, (1,), 7, 2)],
)
def test_parameter_count_other_configs(c, k, arch, kernel, stride):
    net = DenseNet(c, k, arch, stem_kernel=kernel, stem_stride=stride)
    net(torch.zeros(1, 1, 40, 40))
    assert num_params(net) == expected_params(c, k, arch, stem_kernel=kernel)


def test_densenet_num_params():
    assert densenet_num_params() == 758_226
    assert densenet_num_params(32, 16, (2, 2, 2, 2), stem_kernel=3, stem_stride=1) == expected_params(
        32, 16, (2, 2, 2, 2), stem_kernel=3
    )
    assert densenet_num_params(16, 8, (3, 5)) == expected_params(16, 8, (3, 5))


def test_far_fewer_parameters_than_resnet18():
    from d2l_ext.resnet import ResNet18

    dense, res = DenseNet(), ResNet18()
    X = torch.zeros(1, 1, 96, 96)
    dense(X), res(X)
    assert num_params(res) > 14 * num_params(dense)


# -- the smallest input -----------------------------------------------------------------------


def test_min_input_default_is_29():
    assert densenet_min_input() == 29 == DenseNet().min_input()
    assert densenet_sizes(28) == [14, 7, 3, 1, 0]
    assert densenet_sizes(29) == [15, 8, 4, 2, 1]
    assert densenet_min_input(3, 1, 3) == 15


@pytest.mark.parametrize(
    "kernel, stride, arch", [(7, 2, (1, 1, 1, 1)), (3, 1, (1, 1, 1, 1)), (5, 3, (1, 1, 1)), (3, 1, (1,))]
)
def test_min_input_is_exact(kernel, stride, arch):
    """The smallest size runs through the real model; one pixel less is refused."""
    net = DenseNet(4, 2, arch, stem_kernel=kernel, stem_stride=stride).eval()
    m = net.min_input()
    assert net(torch.zeros(1, 1, m, m)).shape == (1, 10)
    with pytest.raises(ValueError, match=rf"at least {m}x{m}"):
        net(torch.zeros(1, 1, m - 1, m))
    if m > 1:  # and without the check, torch itself fails there: the minimum is not too strict
        with pytest.raises(RuntimeError):
            net.net(torch.zeros(1, 1, m - 1, m - 1))


@pytest.mark.parametrize("size", [29, 30, 33, 57, 64, 96])
def test_sizes_match_the_model(size):
    net = DenseNet(8, 4).eval()
    shapes = stage_shapes(net, torch.zeros(1, 1, size, size))
    stem_conv = net.net.b1[0](torch.zeros(1, 1, size, size)).shape[-1]
    heights = [stem_conv] + [shapes[n][-1] for n in ("b1", "tran_blk1", "tran_blk2", "tran_blk3")]
    assert densenet_sizes(size) == heights


def test_too_small_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"28x28 images.*at least 29x29.*resize=96.*stem_kernel=3"):
        DenseNet()(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"14x14 images.*at least 15x15.*resize=15\.$"):
        DenseNet(stem_kernel=3, stem_stride=1)(torch.zeros(2, 1, 14, 14))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="arch must be a non-empty sequence"):
        DenseNet(arch=())
    with pytest.raises(ValueError, match="arch must be"):
        DenseNet(arch=(4, 0))
    with pytest.raises(ValueError, match="stem_kernel must be odd"):
        DenseNet(stem_kernel=4)
    with pytest.raises(ValueError, match="growth_rate must be positive"):
        DenseNet(growth_rate=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(1, 96, 96\)"):
        DenseNet()(torch.zeros(1, 96, 96))


# -- measurement helpers ----------------------------------------------------------------------


def test_saved_activation_bytes_simple_net():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    X = torch.randn(2, 1, 6, 6)
    # conv saves its input (and its weight, a parameter: not counted); ReLU saves its output
    assert saved_activation_bytes(net, X) == X.nbytes + 2 * 4 * 4 * 4 * 4


def test_saved_activation_bytes_dense_block_is_quadratic():
    """Conv block i saves its BN input and ReLU output (c_i maps each) and BN's mean and inverse std."""
    N, c, k, hw = 2, 8, 4, 5 * 5
    for L in (1, 3, 6):
        measured = saved_activation_bytes(DenseBlock(L, k), torch.randn(N, c, 5, 5))
        c_in = [c + i * k for i in range(L)]
        assert sum(c_in) == L * c + k * L * (L - 1) // 2
        assert measured == sum(2 * ci * N * hw * 4 + 2 * ci * 4 for ci in c_in)


def test_densenet_keeps_more_activations_than_resnet18():
    from d2l_ext.resnet import ResNet18

    X = torch.randn(2, 1, 96, 96)
    assert saved_activation_bytes(DenseNet(), X) > 1.3 * saved_activation_bytes(ResNet18(), X)


def test_count_flops():
    assert count_flops(nn.Linear(10, 20), torch.zeros(3, 10)) == 2 * 3 * 10 * 20
    assert count_flops(nn.Conv2d(1, 4, 3), torch.zeros(1, 1, 5, 5)) == 2 * 9 * 4 * 9


@pytest.mark.parametrize("num_convs", [1, 2, 4])
def test_plot_connectivity_counts_dense_inputs(num_convs):
    assert plot_connectivity(num_convs) == num_convs * (num_convs + 1) // 2
    matplotlib.pyplot.close("all")

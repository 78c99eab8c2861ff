"""d2l_ext.resnext and d2l_ext.resnext_tools: group semantics, torchvision as the oracle,
split-and-concatenate, shapes, errors, costs and the explorer's view."""

import ast
import inspect

import pytest
import torch
import torchvision
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

import d2l_ext.resnext
from d2l_ext import experiment
from d2l_ext.measure import count_flops, eval_mode, num_params, stage_shapes
from d2l_ext.resnet import ResNet
from d2l_ext.resnext import ResNeXt, ResNeXtBlock, bottleneck_channels, group_conv_by_split
from d2l_ext.resnext_tools import conv_cost, copy_torchvision_bottleneck, resnext_cost, resnext_cost_view


def built(blk: nn.Module, c_in: int, size: int = 8) -> nn.Module:
    """``blk`` with its Lazy layers materialized by one forward pass."""
    blk(torch.randn(2, c_in, size, size))
    return blk


# -- group semantics and weight shapes --------------------------------------------------------
@pytest.mark.parametrize(
    "num_channels, groups, bot_mul, b",
    [(32, 16, 1, 32), (256, 32, 0.5, 128), (64, 1, 1, 64), (64, 64, 1, 64), (96, 4, 0.25, 24)],
)
def test_groups_is_the_number_of_groups(num_channels, groups, bot_mul, b):
    blk = built(ResNeXtBlock(num_channels, groups, bot_mul), num_channels)
    assert blk.conv2.groups == groups
    assert blk.conv2.weight.shape == (b, b // groups, 3, 3)
    assert blk.conv1.weight.shape == (b, num_channels, 1, 1)
    assert blk.conv3.weight.shape == (num_channels, b, 1, 1)


def test_the_books_example_builds_16_groups_of_2_not_2_groups_of_16():
    ours = built(ResNeXtBlock(32, 16, 1), 32)
    book = built(d2l.ResNeXtBlock(32, 16, 1), 32)  # the book's block, from the installed d2l
    assert (ours.conv2.groups, ours.conv2.weight.numel()) == (16, 576)
    assert (book.conv2.groups, book.conv2.weight.numel()) == (2, 4608)


# -- torchvision as the oracle ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tv_bottleneck() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnext50_32x4d(weights=None).layer1[0]


def test_first_bottleneck_of_resnext50_32x4d(tv_bottleneck):
    ours = built(ResNeXtBlock(256, groups=32, bot_mul=0.5, use_1x1conv=True), 64)
    assert ours.conv2.weight.shape == tv_bottleneck.conv2.weight.shape == (128, 4, 3, 3)
    assert ours.conv2.groups == tv_bottleneck.conv2.groups == 32
    biases = sum(getattr(ours, f"conv{i}").bias.numel() for i in (1, 2, 3, 4))
    assert biases == 128 + 128 + 256 + 256
    assert num_params(tv_bottleneck) == 63_488
    assert num_params(ours) == num_params(tv_bottleneck) + biases


def test_same_output_as_torchvision_in_training_mode_and_in_eval_mode_once_biases_are_zero(tv_bottleneck):
    """The convolutions' biases are the only difference, and BN cancels them on a minibatch."""
    torch.manual_seed(1)
    ours = copy_torchvision_bottleneck(built(ResNeXtBlock(256, 32, 0.5, use_1x1conv=True), 64), tv_bottleneck)
    X = torch.randn(4, 64, 8, 8, requires_grad=True)
    ours.train(), tv_bottleneck.train()
    Y_ours, Y_ref = ours(X), tv_bottleneck(X)
    torch.testing.assert_close(Y_ours, Y_ref)
    (g_ours,) = torch.autograd.grad(Y_ours.square().sum(), X)
    (g_ref,) = torch.autograd.grad(Y_ref.square().sum(), X)
    torch.testing.assert_close(g_ours, g_ref)
    ours = copy_torchvision_bottleneck(ours, tv_bottleneck)  # the running statistics moved with the step
    with torch.no_grad():
        for i in (1, 2, 3, 4):
            getattr(ours, f"conv{i}").bias.zero_()
    with eval_mode(ours), eval_mode(tv_bottleneck), torch.no_grad():
        torch.testing.assert_close(ours(X), tv_bottleneck(X))


# -- a grouped convolution is split, convolve, concatenate ------------------------------------
@pytest.mark.parametrize(
    "c_i, c_o, groups, stride, padding", [(8, 12, 4, 1, 1), (6, 6, 6, 2, 0), (4, 8, 1, 1, 1), (9, 3, 3, 3, 2)]
)
def test_grouped_conv_equals_split_and_concatenate(c_i, c_o, groups, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_i, c_o, 3, stride=stride, padding=padding, groups=groups)
    X = torch.randn(2, c_i, 9, 9, requires_grad=True)
    Y_ref = conv(X)
    Y = group_conv_by_split(X, conv.weight, conv.bias, groups, stride, padding)
    torch.testing.assert_close(Y, Y_ref)
    grads = torch.autograd.grad(Y.sum(), (X, conv.weight))
    grads_ref = torch.autograd.grad(Y_ref.sum(), (X, conv.weight))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    X, W = torch.randn(1, 6, 5, 5), torch.randn(4, 3, 3, 3)  # without a bias
    torch.testing.assert_close(group_conv_by_split(X, W, groups=2), F.conv2d(X, W, groups=2))


# -- shapes across strides --------------------------------------------------------------------
@pytest.mark.parametrize("strides, size, out", [(1, 9, 9), (2, 9, 5), (2, 8, 4), (3, 10, 4)])
def test_shapes_across_strides(strides, size, out):
    blk = ResNeXtBlock(32, 8, 0.5, use_1x1conv=True, strides=strides)
    assert blk(torch.randn(2, 16, size, size)).shape == (2, 32, out, out)
    assert ResNeXtBlock(24, 3, 1)(torch.randn(2, 24, 7, 7)).shape == (2, 24, 7, 7)  # identity shortcut


# -- clear errors: a value of the wrong type is a TypeError, a number out of range a ValueError,
# as for ResNet's Residual; either message shows the expected form of the call ------------------
GROUPS = r"number of groups, a positive int, e\.g\. ResNeXtBlock\(256, groups=32"
CHANNELS = r"num_channels is the number of output channels, a positive int, e\.g\."
BOT_MUL = r"bot_mul is the bottleneck multiplier, a positive number, e\.g\."
STRIDES = r"strides is the stride of the 3x3 convolution, a positive int"
ARCH = r"arch is a sequence of \(num_residuals, num_channels\) pairs"
X8, W4 = torch.randn(1, 8, 4, 4), torch.randn(4, 1, 3, 3)
REFUSED = [  # (what is called, its arguments, error, message)
    (ResNeXtBlock, (48, 32, 1), ValueError, r"b = round\(48 \* 1\) = 48 .* 32 groups .* divisors of 48"),
    (ResNeXtBlock, (256, 3, 0.5), ValueError, r"b = round\(256 \* 0.5\) = 128 .* 3 groups"),
    *[(ResNeXtBlock, (32, g, 1), ValueError, GROUPS) for g in (0, -2, True)],
    (ResNeXtBlock, (32, 2.0, 1), TypeError, GROUPS),
    *[(ResNeXtBlock, (c, 4, 1), ValueError, CHANNELS) for c in (0, -8, True)],
    *[(ResNeXtBlock, (c, 4, 1), TypeError, CHANNELS) for c in (16.0, "16")],
    *[(ResNeXtBlock, (16, 4, m), ValueError, BOT_MUL) for m in (0, -0.5, float("nan"), True)],
    *[(ResNeXtBlock, (16, 4, m), TypeError, BOT_MUL) for m in ("0.5", None)],
    *[(ResNeXtBlock, (16, 4, 1, True, s), ValueError, STRIDES) for s in (0, -1)],
    (ResNeXtBlock, (16, 4, 1, True, 1.5), TypeError, STRIDES),
    (ResNeXtBlock, (16, 1, 0.01), ValueError, "larger bot_mul"),
    (ResNeXtBlock, (16, 4, 1, False, 2), ValueError, "use_1x1conv=True"),
    (ResNeXtBlock(16, 4, 1), (X8,), ValueError, "8 channels in, 16 out: pass use_1x1conv=True"),
    (group_conv_by_split, (X8[:, :6], W4, None, 4), ValueError, "groups=4 must divide c_i=6"),
    # ResNet.__init__ checks arch before ResNeXt swaps a block: one message for both models
    *[(ResNeXt, (arch, 8, 1), TypeError, ARCH) for arch in ([(2, 64), 3], [(2, 64, 1)])],
    *[(ResNeXt, (arch, 8, 1), ValueError, ARCH) for arch in ([], [(0, 64)])],
    (ResNeXt, (((1, 16), (1, 24)), 16, 1), ValueError, r"b = round\(24 \* 1\) = 24"),
    (resnext_cost, (16, 16, 8, 0.25), ValueError, r"b = round\(16 \* 0.25\) = 4"),
]


@pytest.mark.parametrize("call, args, error, message", REFUSED)
def test_bad_arguments_are_refused_saying_what_to_pass(call, args, error, message):
    with pytest.raises(error, match=message):
        call(*args)


# -- the model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["ci", "demo", "full"])
def test_preset_widths_split_into_groups_and_the_model_gives_ten_classes(preset):
    m = experiment("resnext", preset, verbose=False).model
    assert all(bottleneck_channels(c, m["groups"], m["bot_mul"]) % m["groups"] == 0 for _, c in m["arch"])
    assert stage_shapes(ResNeXt(**m), torch.zeros(1, 1, 28, 28))["last"] == (1, 10)


LAYOUTS = [
    dict(arch=((2, 16), (3, 32), (1, 64)), groups=4, bot_mul=0.5, stem_kernel=3, stem_stride=1),
    dict(arch=((1, 8),), groups=4, bot_mul=0.5, stem_kernel=3, stem_stride=1),
    experiment("resnext", "ci", verbose=False).model,
]


@pytest.mark.parametrize("kwargs", LAYOUTS)
def test_model_is_a_resnet_with_a_resnext_block_for_each_residual_block(kwargs):
    """Each block of a ResNet of the same arch becomes a ResNeXt block with its width, stride and
    shortcut; the stem and the head are ResNet's, so the two models give the same shapes."""
    arch, groups, bot_mul = kwargs["arch"], kwargs["groups"], kwargs["bot_mul"]
    net = ResNeXt(**kwargs)
    resnet = ResNet(**{k: v for k, v in kwargs.items() if k not in ("groups", "bot_mul")})
    assert isinstance(net, ResNet) and net.hparams == dict(resnet.hparams, groups=groups, bot_mul=bot_mul)
    X = torch.randn(2, 1, 28, 28)
    assert stage_shapes(net, X) == stage_shapes(resnet, X)  # which also builds the Lazy layers
    stages, ref_stages = list(net.net)[1:-1], list(resnet.net)[1:-1]
    assert [len(s) for s in stages] == [len(s) for s in ref_stages] == [n for n, _ in arch]
    for stage, ref_stage, (_, width) in zip(stages, ref_stages, arch):
        for blk, res in zip(stage, ref_stage):
            assert isinstance(blk, ResNeXtBlock) and blk.conv3.out_channels == width
            assert blk.conv2.stride == res.conv1.stride and (blk.conv4 is None) == (res.conv3 is None)
            b = bottleneck_channels(width, groups, bot_mul)
            assert blk.conv2.groups == groups and blk.conv2.weight.shape[1] == b // groups
    for stem_or_head in (0, -1):
        shapes = [p.shape for p in net.net[stem_or_head].parameters()]
        assert shapes == [p.shape for p in resnet.net[stem_or_head].parameters()]


# -- cost (d2l_ext.resnext_tools) ---------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 4, 64, 128])
def test_conv_cost_is_c_i_c_o_over_g(groups):
    cost = conv_cost(128, 128, groups, kernel_size=3, size=10)
    assert cost["weights"] == 9 * 128 * 128 // groups
    assert cost["params"] == cost["weights"] + 128
    assert cost["flops"] == 2 * 10 * 10 * 9 * 128 * 128 // groups
    # the timing cell's layer on a real batch: 2 k^2 c_i c_o / g FLOPs per output pixel and image
    conv = nn.Conv2d(128, 128, 3, padding=1, groups=groups)
    assert count_flops(conv, torch.randn(2, 128, 6, 6)) == 2 * 2 * 6 * 6 * 9 * 128 * 128 // groups


def test_resnext_cost_matches_real_layers_and_its_view_shows_it_in_mflops_or_the_refusal(capsys):
    rows = resnext_cost(64, 256, groups=32, bot_mul=0.5)
    assert [r["module"] for r in rows] == [
        "Residual(256): two 3x3 convs",
        "3x3 conv 64 -> 256",
        "3x3 conv 128 -> 128, 32 groups",
        "ResNeXtBlock(256, 32, 0.5)",
    ]
    blk = built(ResNeXtBlock(256, 32, 0.5, use_1x1conv=True), 64, size=28)
    assert rows[3]["params"] == num_params(blk) == 64_256
    assert rows[3]["flops"] == count_flops(blk, torch.randn(1, 64, 28, 28))
    assert rows[2]["flops"] == 2 * 28 * 28 * 9 * 128 * 128 // 32
    assert rows[1]["flops"] == 2 * 28 * 28 * 9 * 64 * 256 and rows[1]["ratio"] == 1
    assert rows[2]["ratio"] == rows[2]["flops"] / rows[1]["flops"]
    table = resnext_cost_view(64, 256, 32, 0.5)
    assert list(table.columns) == ["params", "ratio", "MFLOPs"] and table.params.iloc[3] == 64_256
    assert table.MFLOPs.iloc[2] == round(2 * 28 * 28 * 9 * 128 * 128 / 32 / 1e6, 3)
    assert "ResNeXtBlock(256, 32, 0.5)" in capsys.readouterr().out  # displayed, not only returned
    assert resnext_cost_view(16, 16, groups=8, bot_mul=0.25) is None
    assert "b = round(16 * 0.25) = 4" in capsys.readouterr().out


@pytest.mark.parametrize("c, groups", [(256, 32), (64, 8), (96, 4)])
def test_a_narrower_bottleneck_saves_more_than_half(c, groups):
    """At fixed g the block costs 2cb + 9b^2/g weights: halving b more than halves it (notebook 03)."""
    size, flops, params = 14, [], []
    for bot_mul in (1, 0.5, 0.25):
        b = bottleneck_channels(c, groups, bot_mul)
        *_, grouped, block = resnext_cost(c, c, groups, bot_mul, size)
        assert block["params"] == 2 * c * b + 9 * b * b // groups + 6 * b + 3 * c
        assert block["flops"] == 2 * size * size * (2 * c * b + 9 * b * b // groups)
        assert grouped["flops"] == 2 * size * size * 9 * b * b // groups
        flops.append(block["flops"]), params.append(block["params"])
    assert all(flops[i + 1] < flops[i] / 2 and params[i + 1] < params[i] / 2 for i in range(2))
    doubled_groups = resnext_cost(c, c, 2 * groups, 1, size)[-1]["flops"]  # b = c, twice the groups
    assert doubled_groups > 1.9 * flops[1]


# -- the generated module is the lecture's code -------------------------------------------------
def test_the_generated_module_holds_only_lesson_code():
    """Measuring and drawing live in d2l_ext.resnext_tools, each defined once. What the module may
    import: tests/test_repo.py's import-graph test."""
    tree = ast.parse(inspect.getsource(d2l_ext.resnext))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert defined == {"group_conv_by_split", "bottleneck_channels", "ResNeXtBlock", "ResNeXt"}

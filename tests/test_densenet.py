"""Tests of d2l_ext.densenet (generated from notebooks/04_densenet.ipynb), with torch as the oracle,
and of the notebook's tools in d2l_ext.densenet_tools."""

import ast
import inspect
import re
import types

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import d2l_ext.densenet
from d2l_ext import densenet_tools
from d2l_ext.densenet import (
    DenseBlock,
    DenseNet,
    conv_block,
    densenet_channels,
    densenet_min_input,
    densenet_sizes,
    transition_block,
)
from d2l_ext.densenet_tools import (
    architecture_table,
    densenet_explorer,
    densenet_num_params,
    format_architecture_table,
    op_time_shares,
    plot_connectivity,
    reference_architecture_table,
    relative_to,
)
from d2l_ext.measure import count_flops, num_params, op_order, saved_activation_bytes, stage_shapes
from d2l_ext.presets import PRESETS, experiment
from d2l_ext.resnet import Residual, ResNet, ResNet18

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


def functional_bn_relu(X, bn):
    return F.relu(F.batch_norm(X, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))


# -- the lecture's checks ---------------------------------------------------------------------


def test_blocks_have_the_lecture_shapes_and_match_functional_torch():
    assert conv_block(7)(torch.randn(2, 3, 5, 6)).shape == (2, 7, 5, 6)  # height and width kept
    X = torch.randn(4, 3, 8, 8, requires_grad=True)
    blk = DenseBlock(3, 5)
    Y, Z = blk(X), X
    assert Y.shape == (4, 3 + 3 * 5, 8, 8) and torch.equal(Y[:, :3], X)  # the input passed on untouched
    for cb in blk.net:
        bn, conv = cb[0], cb[2]
        Z = torch.cat((Z, F.conv2d(functional_bn_relu(Z, bn), conv.weight, conv.bias, padding=1)), dim=1)
    torch.testing.assert_close(Y, Z)
    (gY,) = torch.autograd.grad(Y.square().sum(), X)
    (gZ,) = torch.autograd.grad(Z.square().sum(), X)
    torch.testing.assert_close(gY, gZ)
    blk = transition_block(10)
    out, bn, conv = blk(Y), blk[0], blk[2]
    expected = F.avg_pool2d(F.conv2d(functional_bn_relu(Y, bn), conv.weight, conv.bias), 2)
    assert out.shape == (4, 10, 4, 4)
    torch.testing.assert_close(out, expected)


def test_book_model_channels_and_shapes_at_96():
    assert [c for _, c in densenet_channels(64, 32, (4, 4, 4, 4))] == LECTURE_CHANNELS
    net = DenseNet()
    shapes = stage_shapes(net, torch.zeros(2, 1, 96, 96))
    stages = ["dense_blk1", "tran_blk1", "dense_blk2", "tran_blk2", "dense_blk3", "tran_blk3", "dense_blk4"]
    assert list(shapes) == ["b1", *stages, "last"]
    assert [s[1] for s in shapes.values()][:-1] == LECTURE_CHANNELS
    assert [s[2] for s in list(shapes.values())[:-1]] == [24, 24, 12, 12, 6, 6, 3, 3]
    assert shapes["last"] == (2, 10)
    assert net(torch.randn(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_models_have_the_knobs_the_channels_and_resnets_flops(preset):
    cfg = experiment("densenet", preset, verbose=False)
    assert {"num_channels", "growth_rate", "arch", "lr", "stem_kernel", "stem_stride"} <= set(cfg.model)
    size = cfg.data.get("resize", 28)
    net = DenseNet(**cfg.model)
    assert net(torch.randn(2, 1, size, size)).shape == (2, 10)
    shapes = stage_shapes(net, torch.zeros(1, 1, size, size))
    expected = densenet_channels(cfg.model["num_channels"], cfg.model["growth_rate"], cfg.model["arch"])
    assert [s[1] for s in shapes.values()][:-1] == [c for _, c in expected]
    if preset != "full":  # the notebook's live assert: DenseNet and ResNet do the same work per image
        X = torch.zeros(1, 1, 28, 28)
        ratio = count_flops(net, X) / count_flops(
            ResNet(**experiment("resnet", preset, verbose=False).model), X
        )
        assert abs(ratio - 1) < 0.1, ratio


@pytest.mark.parametrize(
    "c, k, arch, kernel, stride",
    [
        (64, 32, (4, 4, 4, 4), 7, 2),
        (32, 16, (2, 2, 2, 2), 3, 1),
        (24, 12, (3, 1, 2), 5, 2),
        (16, 8, (3, 5), 7, 2),
        (8, 4, (1,), 7, 2),  # one dense block, no transition
    ],
)
def test_exact_parameter_count(c, k, arch, kernel, stride):
    net = DenseNet(c, k, arch, stem_kernel=kernel, stem_stride=stride)
    expected = expected_params(c, k, arch, stem_kernel=kernel)
    assert num_params(net, torch.zeros(1, 1, 40, 40)) == expected
    assert densenet_num_params(c, k, arch, stem_kernel=kernel, stem_stride=stride) == expected


def test_densenet_num_params_far_fewer_than_resnet18():
    assert densenet_num_params() == 758_226
    assert num_params(ResNet18(), torch.zeros(1, 1, 96, 96)) > 14 * densenet_num_params()
    with pytest.raises(TypeError, match=r"growth_rate is a positive int.*got 16\.5"):
        densenet_num_params(64, 16.5)


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


@pytest.mark.parametrize(
    "net, shape, message",
    [
        (DenseNet(), (2, 1, 28, 28), r"28x28 images.*at least 29x29.*resize=96.*stem_kernel=3"),
        (DenseNet(stem_kernel=3, stem_stride=1), (2, 1, 14, 14), r"14x14.*at least 15x15.*resize=15\.$"),
        (DenseNet(), (1, 96, 96), r"\(N, C, H, W\), got shape \(1, 96, 96\)"),  # no channel axis
    ],
)
def test_bad_input_is_refused_with_the_fix(net, shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape))


# -- bad arguments are refused where the model is built ----------------------------------------

ARCH = r"arch is a sequence of positive ints, the conv blocks per dense block, e\.g\. \(4, 4, 4, 4\)"
GROWTH = r"growth_rate is a positive int, the channels each conv block adds, e\.g\. 32"
CHANNELS = r"num_channels is a positive int, the stem's output channels, e\.g\. 64"
BAD_ARGUMENTS = [
    *[
        (dict(arch=a), TypeError, rf"^{ARCH}; got {re.escape(repr(a))}\.$")
        for a in (4, "44", (4, 2.0), (4, True))
    ],
    *[(dict(arch=a), ValueError, rf"^{ARCH}; got {re.escape(repr(a))}\.$") for a in ((4, 0), (4, -1), ())],
    (dict(growth_rate=16.5), TypeError, rf"^{GROWTH}; got 16\.5\.$"),
    (dict(growth_rate=0), ValueError, rf"^{GROWTH}; got 0\.$"),
    (dict(num_channels="64"), TypeError, rf"^{CHANNELS}; got '64'\.$"),
    (dict(num_channels=-3), ValueError, rf"^{CHANNELS}; got -3\.$"),
    (dict(num_classes=0), ValueError, r"^num_classes is a positive int, the outputs of the head.*; got 0\.$"),
    (dict(num_classes=10.0), TypeError, r"^num_classes is a positive int.*; got 10\.0\.$"),
    (dict(stem_kernel=4), ValueError, r"^stem_kernel is an odd positive int.*7 in the book.*; got 4\.$"),
    (dict(stem_kernel=-1), ValueError, r"^stem_kernel is an odd positive int.*; got -1\.$"),
    (dict(stem_stride=0), ValueError, r"^stem_stride is a positive int.*2 in the book.*; got 0\.$"),
    (dict(lr=-1), ValueError, r"^lr is a positive number, the learning rate, e\.g\. 0\.1; got -1\.$"),
    (dict(lr=float("nan")), ValueError, r"^lr is a positive number.*; got nan\.$"),
    (dict(lr="0.1"), TypeError, r"^lr is a positive number.*; got '0\.1'\.$"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS, ids=[str(b[0]) for b in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_where_the_model_is_built(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        DenseNet(**kwargs)
    # raised by the check that __init__ calls first, not deep inside torch at the first batch
    assert [entry.name for entry in info.traceback][1:] == ["__init__", "check_densenet_args"]


@pytest.mark.parametrize(
    "kwargs",
    [dict(arch=[3, 5]), dict(arch=(1,)), dict(lr=1), dict(stem_kernel=1, stem_stride=1), dict(num_classes=1)],
)
def test_good_arguments_are_accepted(kwargs):
    net = DenseNet(8, 4, **kwargs)
    size = net.min_input()
    assert net(torch.zeros(2, 1, size, size)).shape == (2, kwargs.get("num_classes", 10))
    assert isinstance(net.arch, tuple)  # a list is kept as a tuple, as the book's default


# -- what the notebook measures ---------------------------------------------------------------


def test_a_dense_blocks_saved_bytes_are_quadratic_in_its_depth_and_its_flops_exact():
    """Conv block i reads c + i k channels: it saves its BN input and ReLU output (c + i k maps each) and
    BN's mean and inverse std, and maps them to k by a 3x3 kernel, 2 h w 9 (c + i k) k FLOPs."""
    N, c, k, h = 2, 8, 4, 5
    for L in (1, 3, 6):
        c_in = [c + i * k for i in range(L)]
        assert sum(c_in) == L * c + k * L * (L - 1) // 2
        measured = saved_activation_bytes(DenseBlock(L, k), torch.randn(N, c, h, h))
        assert measured == sum(2 * ci * N * h * h * 4 + 2 * ci * 4 for ci in c_in)
        assert count_flops(DenseBlock(L, k), torch.zeros(1, c, h, h)) == sum(
            2 * h * h * 9 * ci * k for ci in c_in
        )
    X = torch.randn(2, 1, 96, 96)
    ratio = saved_activation_bytes(DenseNet(), X) / saved_activation_bytes(ResNet18(), X)
    assert 1.4 < ratio < 1.7  # the notebook's "about 1.5 times as much" as ResNet-18


def test_op_order_tells_the_blocks_and_the_heads_apart():
    """The book's ResNet block (d2l 1.0.3, section 8.6) and DenseNet's conv block run opposite orders."""
    X = torch.randn(2, 8, 6, 6)
    assert op_order(Residual(8), X) == ["conv", "BN", "ReLU", "conv", "BN", "add", "ReLU"]
    projection = op_order(Residual(16, use_1x1conv=True, strides=2), X)
    assert projection == ["conv", "BN", "ReLU", "conv", "BN", "conv", "add", "ReLU"]
    assert op_order(conv_block(8), X) == ["BN", "ReLU", "conv"]
    assert op_order(DenseBlock(2, 4), X) == ["BN", "ReLU", "conv", "cat"] * 2
    assert op_order(transition_block(4), X) == ["BN", "ReLU", "conv", "avg-pool"]
    X = torch.zeros(2, 1, 96, 96)
    resnet, densenet = ResNet18(), DenseNet()
    resnet(X), densenet(X)
    assert op_order(resnet.net.last, torch.zeros(2, 512, 3, 3)) == ["global-avg-pool", "linear"]
    head = ["BN", "ReLU", "global-avg-pool", "linear"]
    assert op_order(densenet.net.last, torch.zeros(2, 248, 3, 3)) == head


# -- figures and widget views -------------------------------------------------------------------


@pytest.mark.parametrize("num_convs", [1, 2, 4])
def test_plot_connectivity_counts_dense_inputs(num_convs):
    assert plot_connectivity(num_convs) == num_convs * (num_convs + 1) // 2
    matplotlib.pyplot.close("all")


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_explorer_prints_the_lecture_channels_and_parameters_at_once_and_on_every_change(capsys):
    explorer = densenet_explorer(resnet18_params=11_178_378)
    lecture = "channels: 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248\nparameters: 758,226"
    assert explorer.result == lecture + " (ResNet-18: 11,178,378)"  # computed once, without a kernel
    assert explorer.result + "\n" in capsys.readouterr().out  # printed
    sliders = {w.description: w for w in explorer.children if hasattr(w, "description")}
    assert [sliders[n].value for n in ("num_channels", "growth_rate", "num_convs")] == [64, 32, 4]
    sliders["num_convs"].value = 2
    assert explorer.result.endswith(
        f"parameters: {expected_params(64, 32, (2,) * 4):,} (ResNet-18: 11,178,378)"
    )
    sliders["num_channels"].value, sliders["growth_rate"].value, sliders["num_convs"].value = 16, 8, 1
    channels = "channels: 16 -> 24 -> 12 -> 20 -> 10 -> 18 -> 9 -> 17"
    assert explorer.result.startswith(channels + f"\nparameters: {expected_params(16, 8, (1,) * 4):,} (")


# -- the closing tables ---------------------------------------------------------------------------


def fake_run(net, size, seconds=2.0, images=1000, val_acc=0.5):
    trainer = types.SimpleNamespace(images_seen=images, history=[{"seconds": seconds, "val_acc": val_acc}])
    return net, trainer, types.SimpleNamespace(data={"resize": size} if size != 28 else {})


def test_architecture_table_counts_with_the_measuring_tools():
    dense = DenseNet(8, 4)
    block = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(10))
    dense(torch.zeros(2, 1, 96, 96)), block(torch.zeros(1, 1, 28, 28))
    runs = {"DenseNet": fake_run(dense, 32, val_acc=0.8), "small": fake_run(block, 28, seconds=4.0)}
    table = architecture_table(runs)
    assert list(table.index) == ["DenseNet", "small"]
    assert table.loc["DenseNet", "parameters"] == expected_params(8, 4, (4, 4, 4, 4))
    assert table.loc["DenseNet", "MFLOPs/image"] == count_flops(dense, torch.zeros(1, 1, 32, 32)) / 1e6
    assert table.loc["small", "MFLOPs/image"] == (2 * 28 * 28 * 9 * 4 + 2 * 4 * 28 * 28 * 10) / 1e6
    assert list(table["images/s"]) == [500.0, 250.0] and list(table["val acc"]) == [0.8, 0.5]
    assert dense.training and block.training  # the notebook used to leave them in eval mode
    assert "758" not in format_architecture_table(table).to_html()  # formats, does not alter, the table
    assert "80.0%" in format_architecture_table(table).to_html()
    with pytest.raises(ValueError, match="at least 29x29"):
        architecture_table({"DenseNet": fake_run(dense, 28)})
    assert all(m.training for m in dense.modules())


def test_relative_to_divides_flop_rates_and_subtracts_accuracies():
    columns = ["MFLOPs/image", "images/s", "val acc"]
    table = pd.DataFrame({"DenseNet": [8.0, 50.0, 0.80], "ResNet": [4.0, 200.0, 0.85]}, index=columns).T
    out = relative_to(table, "ResNet")
    assert out.loc["DenseNet", "MFLOP/s vs ResNet"] == 0.5 and out.loc["ResNet", "MFLOP/s vs ResNet"] == 1
    assert out.loc["DenseNet", "acc vs ResNet"] == pytest.approx(-0.05)
    assert list(table.columns) == columns  # the input is left alone
    html = format_architecture_table(out).to_html()
    assert "0.50" in html and "-5.0%" in html
    with pytest.raises(KeyError, match="No row 'VGG'.*DenseNet"):
        relative_to(table, "VGG")


def test_reference_architecture_table_reads_the_benchmark(monkeypatch):
    row = dict(input="28x28", epochs=3.0, test_acc=0.9, forward_mflops_per_image=7.0, images_per_s=100.0)
    rows = [
        dict(row, model="densenet", setting="demo"),
        dict(row, model="densenet", setting="book", test_acc=0.1),
    ]
    monkeypatch.setattr(densenet_tools, "load_reference", lambda: {"rows": rows})
    table = reference_architecture_table({"DenseNet": "densenet"}, "demo")
    expected = {"MFLOPs/image": 7.0, "images/s": 100.0, "epochs": 3.0, "val acc": 0.9}
    assert table.loc["DenseNet"].to_dict() == expected
    assert reference_architecture_table({"D": "densenet"}, "book").loc["D", "val acc"] == 0.1
    with pytest.raises(KeyError, match="no 'demo' rows for \\['resnet'\\]; known: \\['densenet'\\]"):
        reference_architecture_table({"ResNet": "resnet"})


def test_committed_reference_has_the_three_architectures():
    """What notebook 04 asserts on the committed benchmark: same FLOPs per image, DenseNet slower."""
    names = {"DenseNet": "densenet", "ResNet": "resnet", "ResNeXt": "resnext"}
    reference = relative_to(reference_architecture_table(names), "ResNet")
    flops = reference["MFLOPs/image"]
    assert abs(flops["DenseNet"] / flops["ResNet"] - 1) < 0.1
    assert reference.loc["DenseNet", "MFLOP/s vs ResNet"] < 0.8
    assert reference["val acc"].idxmin() == "DenseNet"


# -- the generated module is the lecture's code -----------------------------------------------


def test_the_generated_module_holds_only_lesson_code():
    """Measuring and drawing live in d2l_ext.densenet_tools; DenseNet is whole in its class. What the
    module may import: tests/test_repo.py's import-graph test."""
    tree = ast.parse(inspect.getsource(d2l_ext.densenet))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert defined == {
        "conv_block", "DenseBlock", "transition_block", "check_densenet_args", "densenet_sizes",
        "densenet_min_input", "DenseNet", "densenet_channels",
    }  # fmt: skip
    (densenet,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DenseNet"]
    methods = [n.name for n in densenet.body if isinstance(n, ast.FunctionDef)]
    assert methods == ["b1", "__init__", "min_input", "forward"]


def test_op_time_shares_add_up_find_the_concatenation_and_restore_the_threads(capfd):
    threads = torch.get_num_threads()
    y = torch.randint(0, 10, (4,))
    torch.manual_seed(0)
    dense, res = DenseNet(8, 4, (2, 2)), ResNet(((1, 8), (1, 16)))
    shares = {}
    for name, net in (("dense", dense), ("res", res)):
        X = torch.randn(4, 1, 32, 32)
        net(X)
        shares[name] = op_time_shares(net, X, y, steps=2)
    assert torch.get_num_threads() == threads
    for s in shares.values():
        assert set(s) == {*densenet_tools.OP_KINDS, "other", "ms per step"}
        assert sum(v for k, v in s.items() if k != "ms per step") == pytest.approx(1)
        assert s["convolution"] > 0 and s["BN"] > 0 and s["ms per step"] > 0
    assert shares["dense"]["cat"] > 0 and shares["res"]["cat"] == 0  # only DenseNet concatenates
    assert capfd.readouterr().err == ""  # the profiler's own lines stay out of the notebook

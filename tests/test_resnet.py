"""Tests of d2l_ext.resnet (generated from notebook 02), with torch and torchvision as oracles, and of
the notebook's tools in d2l_ext.resnet_tools."""

import math
import re

import matplotlib

matplotlib.use("Agg")  # figures are drawn and inspected, never shown

import pytest
import torch
import torchvision
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext import FashionMNIST
from d2l_ext.measure import eval_mode, num_params, stage_shapes
from d2l_ext.presets import PRESETS, experiment
from d2l_ext.resnet import PlainBlock, PlainNet, PreActResidual, Residual, ResNet, ResNet18
from d2l_ext.resnet_tools import (
    branch_ratios,
    final_loss,
    init_grad_rms,
    plot_function_fits,
    plot_grad_rms,
    plot_step_losses,
    residual_parts,
    shortcut_gradient,
)
from d2l_ext.training import StepLosses, Trainer

SMALL = dict(stem_kernel=3, stem_stride=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def materialized(net, shape=(2, 1, 8, 8)):
    net.apply_init([torch.zeros(shape)], d2l.init_cnn)
    return net


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
@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1)])
def test_residual_and_plain_block_shapes(strides, c_in, c_out, hw):
    X = torch.randn(2, c_in, *hw)
    out = (2, c_out, math.ceil(hw[0] / strides), math.ceil(hw[1] / strides))
    assert Residual(c_out, use_1x1conv=True, strides=strides)(X).shape == out
    assert PlainBlock(c_out, strides=strides)(X).shape == out
    if c_in == c_out and strides == 1:
        assert Residual(c_out)(X).shape == X.shape  # the identity shortcut


def bn_train(Z, bn):  # BN in training mode: the minibatch's statistics
    return F.batch_norm(Z, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def book_formula(blk, X):  # ReLU(BN(conv(ReLU(BN(conv(X))))) + shortcut(X))
    stride, shortcut = blk.conv1.stride, X if blk.conv3 is None else blk.conv3(X)
    Z = F.relu(bn_train(F.conv2d(X, blk.conv1.weight, blk.conv1.bias, stride=stride, padding=1), blk.bn1))
    return F.relu(bn_train(F.conv2d(Z, blk.conv2.weight, blk.conv2.bias, padding=1), blk.bn2) + shortcut)


def preact_formula(blk, X):  # X + conv(ReLU(BN(conv(ReLU(BN(X))))))
    return X + blk.conv2(F.relu(bn_train(blk.conv1(F.relu(bn_train(X, blk.bn1))), blk.bn2)))


BLOCKS = {  # a block, its input channels, and its output by torch's functional calls
    "identity": (lambda: Residual(4), 4, book_formula),
    "1x1": (lambda: Residual(5, use_1x1conv=True, strides=2), 4, book_formula),
    "preact": (lambda: PreActResidual(4), 4, preact_formula),
}


@pytest.mark.parametrize("make, c_in, formula", BLOCKS.values(), ids=BLOCKS.keys())
def test_blocks_and_their_residual_parts_compute_the_formula_in_torch_functional(make, c_in, formula):
    blk, X = make(), F.relu(torch.randn(3, c_in, 9, 9))
    blk(X)  # materializes the Lazy layers, then BN's affine parameters that are not the identity
    randomize_bn(blk)
    out = blk(X)
    torch.testing.assert_close(out, formula(blk, X))
    g, s, join = residual_parts(blk, X)
    assert g.shape == s.shape == out.shape
    torch.testing.assert_close(join(g, s), out)


# -- identity -------------------------------------------------------------------------------
def zero_branch(blk):
    nn.init.zeros_(blk.bn2.weight)
    nn.init.zeros_(blk.bn2.bias)
    return blk


@pytest.mark.parametrize("Block, identity", [(Residual, True), (PlainBlock, False)])
@pytest.mark.parametrize("train", [True, False])
def test_zero_branch_is_the_identity_on_nonnegative_inputs_and_zero_without_shortcut(Block, identity, train):
    blk = Block(3)
    X = F.relu(torch.randn(4, 3, 6, 6))
    blk(X)
    zero_branch(blk).train(train)
    assert torch.equal(blk(X), X if identity else torch.zeros_like(X))


def test_deeper_resnet_contains_the_shallower():
    shallow = materialized(ResNet(((1, 8), (1, 16)), **SMALL), (2, 1, 28, 28))
    deep = materialized(ResNet(((3, 8), (3, 16)), **SMALL), (2, 1, 28, 28))
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
def test_a_stage_halves_the_size_unless_it_is_the_first(first_block, num_residuals):
    stage = ResNet(((1, 8),), **SMALL).block(num_residuals, 8, first_block=first_block)
    Y = stage(torch.randn(2, 8 if first_block else 4, 10, 10))
    assert Y.shape == ((2, 8, 10, 10) if first_block else (2, 8, 5, 5))
    assert len(stage) == num_residuals
    assert [blk.conv3 is not None for blk in stage] == [not first_block] + [False] * (num_residuals - 1)


NARROW = ((1, 16), (1, 32), (1, 64), (1, 128))
STAGES = {  # (model, input size, (channels, size) after each stage)
    "book's ResNet-18": (ResNet18, 96, [(64, 24), (64, 24), (128, 12), (256, 6), (512, 3)]),
    "narrow": (lambda: ResNet(NARROW, **SMALL), 28, [(16, 14), (16, 14), (32, 7), (64, 4), (128, 2)]),
}


@pytest.mark.parametrize("model, size, expected", STAGES.values(), ids=STAGES.keys())
def test_stage_shapes(model, size, expected):
    shapes = stage_shapes(model(), torch.zeros(1, 1, size, size))
    assert shapes == {f"b{i + 1}": (1, c, s, s) for i, (c, s) in enumerate(expected)} | {"last": (1, 10)}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_models_build_and_give_ten_classes(preset):
    cfg = experiment("resnet", preset, verbose=False)
    size = cfg.data.get("resize", 28)
    shapes = stage_shapes(ResNet(**cfg.model), torch.zeros(2, 1, size, size))
    assert shapes["last"] == (2, 10) and shapes["b1"][1] == cfg.model["arch"][0][1]
    deg = experiment("degradation", preset, verbose=False)  # the plain and residual runs
    shallow, deep = deg.extra["depths"]
    assert shallow < deep and len(deg.extra["widths"]) == 3
    assert deg.trainer["max_steps"] and deg.trainer["label_smoothing"] == 0
    PlainNet(tuple((deep, w) for w in deg.extra["widths"]), **deg.model)


# -- malformed arguments: a clear error where the model is built ---------------------------
ARCH_FORM = (
    r"arch is a sequence of \(num_residuals, num_channels\) pairs of positive ints, "
    r"e\.g\. \(\(2, 64\), \(2, 128\), \(2, 256\), \(2, 512\)\); got "
)


BAD_ARCHS = {  # not pairs of ints (a triple, one pair, no sequence), or a count < 1, or no stage
    TypeError: [[(2, 64), 3], ((2, 16.5),), ((2, "64"),), ((2, None),), ((2, 64, 1),), (2, 64), 7, "ab"],
    ValueError: [(), ((0, 64),), ((-1, 64),), ((2, 0),), ((True, 64),)],
}


@pytest.mark.parametrize("arch, error", [(arch, e) for e, archs in BAD_ARCHS.items() for arch in archs])
@pytest.mark.parametrize("Net", [ResNet, PlainNet])
def test_malformed_arch_is_a_clear_error_at_construction(Net, arch, error):
    with pytest.raises(error, match=ARCH_FORM + re.escape(repr(arch))) as info:
        Net(arch)
    # Raised by the check in ResNet.__init__, not by a layer deep inside it.
    frames = info.traceback
    assert any(f.name == "check_arch" for f in frames)
    assert not any("torch" in str(f.path) for f in frames)


def test_arch_accepts_lists_numpy_ints_and_generators():
    np = pytest.importorskip("numpy")
    arch = [[np.int64(1), np.int64(4)], (2, 8)]
    for given in (arch, (stage for stage in arch)):
        assert ResNet(given, **SMALL).arch == ((1, 4), (2, 8))


USAGE = r"e\.g\. Residual\(128, use_1x1conv=True, strides=2\)"
STEM = r"stem_kernel \(odd\) and stem_stride are positive ints"
STRIDES = rf"strides must be a positive int, {USAGE}; got "
CHANNELS = rf"num_channels must be a positive int, {USAGE}; got "
ONE = ((1, 16),)
REFUSED = [  # (what is called, its arguments, keyword arguments, error, message)
    (ResNet, (ONE,), dict(stem_kernel=4), ValueError, STEM + ".*4 and 2"),
    (ResNet, (ONE,), dict(stem_kernel=7.0), TypeError, "got 7.0 and 2"),
    (ResNet, (ONE,), dict(stem_stride=0), ValueError, "got 7 and 0"),
    (ResNet, (ONE,), dict(num_classes=0), ValueError, "num_classes must be a positive int, e.g. 10; got 0"),
    (ResNet, (ONE,), dict(num_classes=10.0), TypeError, "num_classes must be a positive int"),
    *[(Residual, (64, True, s), {}, ValueError, STRIDES + str(s)) for s in (0, -2)],
    *[(Residual, (64, True, s), {}, TypeError, STRIDES + re.escape(repr(s))) for s in (1.5, "2")],
    *[(Residual, (c,), {}, TypeError, CHANNELS + re.escape(repr(c))) for c in (16.5, "64", None)],
    *[(Residual, (c,), {}, ValueError, CHANNELS + str(c)) for c in (0, -3)],
    *[(Residual, (6,), dict(strides=s), ValueError, f"strides={s} changes the shape") for s in (2, 3)],
    (Residual(6), (torch.randn(4, 3, 6, 6),), {}, ValueError, r"3 channels in, 6 out: pass use_1x1conv=True"),
    (PreActResidual, (0,), {}, ValueError, "num_channels"),
    (PreActResidual(4), (torch.randn(2, 3, 5, 5),), {}, ValueError, "identity shortcut"),
    (residual_parts, (PlainBlock(4), torch.ones(1, 4, 2, 2)), {}, TypeError, "block, not a PlainBlock"),
    (branch_ratios, (PlainNet(ONE, **SMALL), torch.randn(2, 1, 8, 8)), {}, ValueError, "no Residual"),
    (final_loss, ([],), {}, ValueError, "no losses"),
    *[(final_loss, ([1.0], frac), {}, ValueError, r"frac .* in \(0, 1\]") for frac in (0, 1.5)],
]


@pytest.mark.parametrize("call, args, kwargs, error, message", REFUSED)
def test_bad_arguments_are_clear_errors(call, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        call(*args, **kwargs)


# -- torchvision as the reference -----------------------------------------------------------
def test_resnet18_is_the_books_with_torchvisions_parameters_plus_the_conv_biases():
    model = ResNet18(lr=0.05, num_classes=7)
    assert model.arch == ((2, 64), (2, 128), (2, 256), (2, 512))
    assert (model.stem_kernel, model.stem_stride, model.lr) == (7, 2, 0.05)
    stem = model.net.b1[0]
    assert (stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (64, (7, 7), (2, 2), (3, 3))
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 7)
    ours, ref = materialized(ResNet18(), (2, 1, 96, 96)), torchvision_resnet18()
    assert (num_params(ours), num_params(ref)) == (11_178_378, 11_175_370)  # 1 channel in, 10 classes
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
    assert stage_shapes(plain, X) == stage_shapes(res, X)


def test_init_grad_rms_is_autograds_on_a_fresh_net_plain_explodes_callers_random_state_kept():
    X, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    kw = dict(stem_kernel=3, stem_stride=2)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    plain = init_grad_rms(PlainNet, 5, (8, 16, 32), X, y, seed=1, **kw)
    assert torch.equal(torch.rand(3), expected_draw)
    res = init_grad_rms(ResNet, 5, (8, 16, 32), X, y, seed=1, **kw)
    assert len(plain) == len(res) == 1 + 2 * 5 * 3  # no 1x1 shortcut
    assert plain[0] / plain[-1] > 5 * res[0] / res[-1]
    torch.manual_seed(1)  # the same net and step by hand, in training mode
    net = ResNet(((5, 8), (5, 16), (5, 32)), **kw)
    net.apply_init([X[:2]], d2l.init_cnn)
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    grads = torch.autograd.grad(F.cross_entropy(net(X), y), convs)
    torch.testing.assert_close(torch.tensor(res), torch.stack([g.norm() / g.numel() ** 0.5 for g in grads]))


def test_step_losses_record_every_step_of_a_plain_net_and_final_loss_averages_the_last():
    data = FashionMNIST(batch_size=32, train_subset=320, val_subset=100, verbose=False)
    rec = StepLosses()  # as the notebook's degradation runs record their losses
    trainer = Trainer(max_epochs=5, max_steps=4, plot=False, callbacks=[rec])
    trainer.fit(PlainNet(((1, 4),), stem_kernel=3), data)
    assert len(rec.losses) == 4 and all(0 < v < 10 for v in rec.losses)
    assert final_loss(rec.losses) == rec.losses[-1]
    losses = [float(v) for v in range(1, 101)]  # 1..100
    assert final_loss(losses) == sum(range(91, 101)) / 10
    assert final_loss(losses, frac=0.5) == sum(range(51, 101)) / 50
    assert final_loss([2.0, 4.0], frac=0.1) == 4.0  # at least the last step


# -- figures and the slider ------------------------------------------------------------------
@pytest.fixture
def figures():
    yield
    matplotlib.pyplot.close("all")


def test_plot_function_fits_and_plot_grad_rms_draw_the_given_numbers(figures):
    x = torch.linspace(-1, 1, 5)
    axes = plot_function_fits(
        x, x**3, {"F_3": x**2, "F_4": x}, {"non-nested": [3.0, 1.5], "nested": [2.0, 1.0]}
    )
    assert [line.get_label() for line in axes[0].lines] == ["$f^*$", "F_3", "F_4"]
    assert list(axes[0].lines[2].get_ydata()) == x.tolist()
    assert [list(line.get_ydata()) for line in axes[1].lines] == [[3.0, 1.5], [2.0, 1.0]]
    ax = plot_grad_rms({"PlainNet": [3.0, 2.0, 1.0], "ResNet": [1.0, 1.0, 1.0]}, "8 layers")
    assert ax.get_title() == "8 layers" and ax.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in ax.lines] == [[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]


def test_plot_step_losses_one_panel_per_network_with_window_means(figures):
    runs = {("Plain", 8): [4.0, 2.0, 2.0, 1.0], ("Plain", 32): [4.0] * 4, ("Res", 8): [1.0] * 4}
    axes = plot_step_losses(runs, num_points=2)  # a window of 2 steps
    assert [ax.get_title() for ax in axes] == ["Plain", "Res"]
    assert list(axes[0].lines[0].get_ydata()) == [3.0, 2.0, 1.5]
    assert list(axes[0].lines[0].get_xdata()) == [2, 3, 4]
    assert [line.get_label() for line in axes[0].lines] == ["8 layers", "32 layers"]


# -- the measures of residual blocks ----------------------------------------------------------
def test_shortcut_gradient_identity_gated_by_relu_preact_whole_projection_transposed():
    X = F.relu(torch.randn(4, 4, 6, 6))
    book, proj, pre = (make() for make, _, _ in BLOCKS.values())
    for blk in (book, proj, pre):
        blk(X)
    delta = torch.randn(4, 4, 6, 6)
    g, s, _ = residual_parts(book, X)
    on = (g + s > 0).float()
    assert 0 < on.mean() < 1  # some units are off: the identity term is not the whole gradient
    torch.testing.assert_close(shortcut_gradient(book, X, delta), on * delta)
    torch.testing.assert_close(shortcut_gradient(pre, X, delta), delta)
    delta = torch.randn(4, 5, 3, 3)
    g, s, _ = residual_parts(proj, X)
    Xg = X.clone().requires_grad_()
    (expected,) = torch.autograd.grad(proj.conv3(Xg), Xg, (g + s > 0) * delta)
    torch.testing.assert_close(shortcut_gradient(proj, X, delta), expected)


def test_branch_ratios_one_per_block_zero_for_a_zeroed_branch_mode_restored():
    net = materialized(ResNet(((2, 4), (1, 8)), **SMALL))
    blocks = [m for m in net.modules() if isinstance(m, Residual)]
    zero_branch(blocks[1])
    net.train()
    X = torch.randn(4, 1, 8, 8)
    ratios = branch_ratios(net, X)
    assert len(ratios) == 3 and ratios[1] == 0 and ratios[0] > 0 and ratios[2] > 0
    assert all(m.training for m in net.modules()) and not any(m._forward_hooks for m in net.modules())
    with eval_mode(net), torch.no_grad():  # the first block by hand: its input is the stem's output
        g, s, _ = residual_parts(blocks[0], net.net.b1(X))
    assert ratios[0] == pytest.approx((g.norm() / s.norm()).item())

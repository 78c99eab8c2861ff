"""d2l_ext.batch_norm: the from-scratch layers against PyTorch's; notebook 01's tools in batch_norm_tools."""

import ast
import json
from pathlib import Path

import pytest
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.batch_norm import (
    BatchNorm,
    BNLeNet,
    BNLeNetAfter,
    BNLeNetScratch,
    LayerNorm,
    batch_norm,
    layer_norm,
)
from d2l_ext.batch_norm_tools import (
    GhostBatchNorm,
    batch_noise_explorer,
    batch_stat_noise,
    bn_inputs,
    bn_layers,
    companion_outputs,
    exact_bn_statistics,
    ghost_batches,
    sigmoid_inputs,
)
from d2l_ext.measure import ActivationRecorder

SHAPES = [(16, 7), (4, 3, 5, 6)]  # fully connected (N, C) and convolutional (N, C, H, W)


def pair(shape, momentum=0.1, dtype=torch.float64, seed=0):
    """Our layer and PyTorch's, with the same random gamma and beta."""
    torch.manual_seed(seed)
    C = shape[1]
    ours = BatchNorm(C, num_dims=len(shape), momentum=momentum).to(dtype)
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(C, momentum=momentum).to(dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.normal_()
        ours.gamma.copy_(ref.weight.view_as(ours.gamma))
        ours.beta.copy_(ref.bias.view_as(ours.beta))
    return ours, ref


def batches(shape, n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) * (1 + i) + i for i in range(n)]


def same_step(layer, ref, X):
    """One training step of both layers on X: outputs and input gradients must be equal."""
    X1, X2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    Y1, Y2 = layer(X1), ref(X2)
    torch.testing.assert_close(Y1, Y2)
    G = torch.randn_like(X)
    (Y1 * G).sum().backward(), (Y2 * G).sum().backward()
    torch.testing.assert_close(X1.grad, X2.grad)


# ---- the layer against nn.BatchNorm1d / nn.BatchNorm2d -----------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (1, 3, 5, 5)])  # and a batch of one image
@pytest.mark.parametrize(
    "momentum, dtype", [(m, torch.float64) for m in (0.1, 0.5, 0.0, 1.0, None)] + [(0.1, torch.float32)]
)
def test_training_and_eval_mode_state_dict_and_gradients_equal_torch(shape, momentum, dtype):
    ours, ref = pair(shape, momentum, dtype)
    for X in batches(shape, 5, dtype):
        same_step(ours, ref, X)
        torch.testing.assert_close(ours.gamma.grad.flatten(), ref.weight.grad)
        torch.testing.assert_close(ours.beta.grad.flatten(), ref.bias.grad)
        ours.zero_grad(), ref.zero_grad()
    with torch.no_grad():  # autograd off in training mode: still batch statistics, still updated
        torch.testing.assert_close(ours(X), ref(X))
    names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
    for ours_name, ref_name in names.items():
        torch.testing.assert_close(ours.state_dict()[ours_name].flatten(), ref.state_dict()[ref_name])
    fresh = BatchNorm(shape[1], num_dims=len(shape), momentum=momentum).to(dtype)
    fresh.load_state_dict(ours.state_dict())
    fresh.eval(), ref.eval()
    X = batches(shape, 1, dtype, seed=7)[0].requires_grad_()  # autograd on: still prediction mode
    Y = fresh(X)
    torch.testing.assert_close(Y, ref(X))
    torch.testing.assert_close(fresh(X[:1]), Y[:1])  # an example's output does not depend on its batch
    Y.sum().backward()
    assert X.grad is not None
    assert int(fresh.num_batches_tracked) == int(ref.num_batches_tracked) == 6  # eval mode counts none


def test_batch_of_one_vector_is_refused_like_torch():
    X = torch.randn(1, 5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(5)(X)
    bn = BatchNorm(5, num_dims=2)
    with pytest.raises(ValueError, match=r"more than one value per channel.*\(1, 5\).*at least 2"):
        bn(X)
    assert int(bn.num_batches_tracked) == 0 and bn.moving_var.eq(1).all()  # nothing half-updated
    bn.eval()
    assert bn(X).shape == (1, 5)  # prediction mode is fine


@pytest.mark.parametrize(
    "dtype, device", [(torch.float64, "cpu"), (torch.bfloat16, "cpu"), (torch.float32, "meta")]
)  # meta: a device every machine has, to which the buffers must follow
def test_running_statistics_are_buffers_that_move_with_the_layer(dtype, device):
    bn = BatchNorm(3, num_dims=4)
    assert list(bn.state_dict()) == ["gamma", "beta", "moving_mean", "moving_var", "num_batches_tracked"]
    assert [n for n, _ in bn.named_parameters()] == ["gamma", "beta"]
    assert bn.gamma.shape == bn.moving_var.shape == (1, 3, 1, 1)
    assert BatchNorm(3, num_dims=2).moving_mean.shape == (1, 3)
    bn(torch.randn(8, 3, 2, 2, dtype=torch.float64))  # an input of another dtype does not change theirs
    assert bn.moving_mean.dtype == bn.moving_var.dtype == torch.float32
    bn = bn.to(device=device, dtype=dtype)
    assert all(t.dtype == dtype for t in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_var))
    assert {t.device.type for t in bn.state_dict().values()} == {device}
    assert bn.num_batches_tracked.dtype == torch.long
    Y = bn(torch.randn(2, 3, 4, 4, dtype=dtype, device=device))
    assert Y.dtype == bn.moving_mean.dtype == dtype and Y.device.type == device


def test_function_matches_f_batch_norm_in_both_modes():
    X = batches((10, 4, 3, 3), 1)[0]
    shape = (1, 4, 1, 1)
    gamma, beta = torch.rand(shape, dtype=X.dtype) + 0.5, torch.randn(shape, dtype=X.dtype)
    mm, mv = torch.randn(shape, dtype=X.dtype), torch.rand(shape, dtype=X.dtype) + 0.5
    rm, rv = mm.flatten().clone(), mv.flatten().clone()
    Y, new_mm, new_mv = batch_norm(X, gamma, beta, mm, mv, eps=1e-5, momentum=0.3)
    ref = F.batch_norm(X, rm, rv, gamma.flatten(), beta.flatten(), training=True, momentum=0.3, eps=1e-5)
    torch.testing.assert_close(Y, ref)
    torch.testing.assert_close(new_mm.flatten(), rm)
    torch.testing.assert_close(new_mv.flatten(), rv)
    Y, same_mm, same_mv = batch_norm(X, gamma, beta, mm, mv, eps=1e-5, momentum=0.3, training=False)
    ref = F.batch_norm(X, mm.flatten(), mv.flatten(), gamma.flatten(), beta.flatten(), False, eps=1e-5)
    torch.testing.assert_close(Y, ref)
    assert same_mm is mm and same_mv is mv


# ---- bad arguments and input: refused with what to pass ------------------------------------------

X2, X3, X4 = torch.randn(2, 5), torch.randn(2, 3, 4), torch.randn(2, 3, 5, 5)
MOMENTUM, INTS = r"momentum must be a number in \[0, 1\]", r"must be an int or a tuple of ints"
REFUSED = [  # (what is called, its arguments, keyword arguments, error, message)
    (BatchNorm, (6, 3), {}, ValueError, r"num_dims is 2 \(fully connected\) or 4 \(convolution\), not 3"),
    (BatchNorm, (6, 4), dict(eps=-1e-5), ValueError, r"eps must be >= 0.*1e-05.*got -1e-05"),
    (BatchNorm, (6, 4), dict(eps="1e-5"), TypeError, r"eps must be a number.*got '1e-5'"),
    (BatchNorm, (6, 4), dict(momentum=1.5), ValueError, MOMENTUM + r".*None.*got 1.5"),
    (BatchNorm, (6, 4), dict(momentum=-0.1), ValueError, MOMENTUM + r".*got -0.1"),
    (BatchNorm, (6, 2), dict(momentum="0.1"), TypeError, MOMENTUM + r".*got '0.1'"),
    (BatchNorm, (6, 2), dict(momentum=True), TypeError, MOMENTUM + r".*got True"),
    (BatchNorm, (6, 4, 0.1), {}, TypeError, "positional"),  # eps? momentum? it must be said
    (BatchNorm(6, 4), (X4,), {}, ValueError, r"input \(2, 3, 5, 5\) does not fit BatchNorm\(6, num_dims=4\)"),
    (BatchNorm(3, 2), (X4,), {}, ValueError, r"input \(2, 3, 5, 5\) does not fit BatchNorm\(3, num_dims=2\)"),
    (BatchNorm(6, 2), (torch.randn(6),), {}, ValueError, r"input \(6,\) does not fit"),  # no channel axis
    (batch_norm, (X3, 1, 0, 0, 1, 1e-5, 0.1), {}, ValueError, r"\(N, C\) or \(N, C, H, W\).*\(2, 3, 4\)"),
    (LayerNorm, (10,), dict(eps=-1e-5), ValueError, r"eps must be >= 0.*1e-05.*got -1e-05"),
    (LayerNorm, (10,), dict(eps="1e-5"), TypeError, r"eps must be a number.*got '1e-5'"),
    (LayerNorm, (10, 1e-5, 1e-5), {}, TypeError, r"elementwise_affine must be True or False"),
    (LayerNorm, (2.5,), {}, TypeError, INTS + r".*LayerNorm\(X.shape\[1:\]\).*eps=\.\.\."),
    (LayerNorm, ((4, 0),), {}, ValueError, r"normalized_shape must be positive.*\(4, 0\)"),
    (LayerNorm((4, 6)), (X3,), {}, ValueError, r"normalizing over \(4, 6\).*ends in \(4, 6\).*\(2, 3, 4\)"),
    (layer_norm, (torch.randn(5),), {}, ValueError, "batch axis"),
    (layer_norm, (X2, 1e-3), {}, TypeError, INTS + r".*eps goes by name"),  # the old positional eps
    (layer_norm, (X2,), dict(eps=-1.0), ValueError, "eps must be >= 0"),
    (layer_norm, (X2, 4), {}, ValueError, r"ends in \(4,\).*\(2, 5\)"),
]


@pytest.mark.parametrize("call, args, kwargs, error, message", REFUSED)
def test_bad_arguments_and_input_are_refused_saying_what_to_pass(call, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        call(*args, **kwargs)


def test_eps_and_momentum_by_name_accept_their_whole_range():
    for momentum in (0.0, 1.0, None):
        assert BatchNorm(6, 4, eps=0.0, momentum=momentum).momentum == momentum


# ---- the models ------------------------------------------------------------------------------------


def test_bn_lenets_shapes_parameter_counts_and_placement():
    X = torch.randn(4, 1, 28, 28)
    models = [BNLeNetScratch(), BNLeNet(), BNLeNetAfter()]
    for model in models:
        assert model(X).shape == (4, 10)
    counts = [sum(p.numel() for p in m.parameters()) for m in models]
    convs_and_linears = (
        (6 * 25 + 6) + (16 * 6 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    )
    assert counts == [convs_and_linears + 2 * (6 + 16 + 120 + 84)] * 3
    assert BNLeNet(num_classes=3)(X).shape == (4, 3) and BNLeNet(lr=0.5).lr == 0.5
    kinds = [type(m).__name__ for m in BNLeNetAfter().net]  # BN after each sigmoid
    bns = [i for i, kind in enumerate(kinds) if kind.startswith("LazyBatchNorm")]
    assert len(bns) == 4 and all(kinds[i - 1] == "Sigmoid" for i in bns)


def test_scratch_and_concise_bn_lenet_compute_the_same_function():
    X = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    scratch, concise = BNLeNetScratch().double(), BNLeNet().double()
    scratch(X), concise(X)
    for a, b in zip(scratch.state_dict().values(), concise.state_dict().values()):
        b.copy_(a.view_as(b))  # same order, same values: weights, gamma/beta, running stats
    torch.testing.assert_close(scratch(X), concise(X))
    scratch.eval(), concise.eval()
    torch.testing.assert_close(scratch(X), concise(X))


# ---- layer normalization ---------------------------------------------------------------------------


def ln_pair(normalized_shape, **kwargs):
    """Our LayerNorm and PyTorch's, ours loaded from PyTorch's (random) state dict."""
    torch.manual_seed(0)
    ref = nn.LayerNorm(normalized_shape, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 2.0)
    ours = LayerNorm(normalized_shape, **kwargs).double()
    ours.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    return ours, ref


@pytest.mark.parametrize(
    "shape, normalized_shape",
    [((5, 7), 7), ((3, 4, 6), (6,)), ((3, 4, 6), (4, 6)), ((2, 3, 5, 5), (3, 5, 5)), ((2, 3, 5, 5), [5])],
)
def test_layer_norm_layer_equals_torch_in_outputs_gradients_and_state_dict(shape, normalized_shape):
    ours, ref = ln_pair(normalized_shape)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert ours.normalized_shape == ref.normalized_shape and ours.eps == ref.eps == 1e-5
    same_step(ours, ref, torch.randn(shape, dtype=torch.float64) * 3 + 1)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    ref.load_state_dict(ours.state_dict())  # and back


@pytest.mark.parametrize("kwargs", [dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-2)])
def test_layer_norm_layer_options_mean_what_they_mean_in_torch(kwargs):
    ours, ref = ln_pair((4, 6), **kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    X = torch.randn(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(X), ref(X))


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6), (2, 3, 5, 5)])
def test_layer_norm_function_equals_torch_with_gradients(shape):
    X = torch.randn(shape, dtype=torch.float64) * 3 + 1
    # every element of an example: the lecture's LN
    same_step(layer_norm, lambda X: F.layer_norm(X, shape[1:]), X)
    torch.testing.assert_close(layer_norm(X, eps=1e-3), F.layer_norm(X, shape[1:], eps=1e-3))
    w, b = torch.rand(shape[-1:], dtype=X.dtype), torch.randn(shape[-1:], dtype=X.dtype)
    torch.testing.assert_close(
        layer_norm(X, shape[-1], w, b, eps=1e-3), F.layer_norm(X, shape[-1:], w, b, eps=1e-3)
    )


def test_layer_norm_is_scale_invariant_until_eps_and_batch_independent():
    X = torch.randn(4, 50, dtype=torch.float64)
    torch.testing.assert_close(layer_norm(1e3 * X), layer_norm(X), rtol=1e-4, atol=1e-4)
    assert layer_norm(1e-4 * X).abs().max() < 0.1  # eps dominates: the output collapses
    torch.testing.assert_close(layer_norm(X[:1]), layer_norm(X)[:1])
    assert layer_norm(X, eps=0).std(1, unbiased=False).sub(1).abs().max() < 1e-12  # eps=0: exact


# ---- the notebook's code: the book's layer as it transcribes it (d2l 1.0.3, 8.5), what it saves ----

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_batch_norm.ipynb"


def book_layer(path=NOTEBOOK):
    """The notebook's transcription of the book's ``BatchNorm``, run from its own cells.

    d2l 1.0.3 does not ship the section's ``batch_norm``/``BatchNorm`` in ``d2l/torch.py``, so the
    reference is what the book's code computes: PyTorch's update with momentum 0.1, eps 1e-5, a
    biased running variance, and prediction mode whenever autograd is off.
    """
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    namespace = {"torch": torch, "nn": nn}
    sources = [c for c in cells if "def book_batch_norm(" in c or "class BookBatchNorm(" in c]
    assert sources, f"{path.name} no longer defines book_batch_norm and BookBatchNorm"
    for source in sources:
        exec(compile(source, str(path), "exec"), namespace)
    return namespace["BookBatchNorm"]


@pytest.mark.parametrize("shape", SHAPES)
def test_book_transcription_computes_what_the_books_code_does(shape):
    BookBatchNorm = book_layer()
    C = shape[1]
    book = BookBatchNorm(C, num_dims=len(shape)).double()
    book.moving_mean, book.moving_var = book.moving_mean.double(), book.moving_var.double()
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(C, momentum=0.1, eps=1e-5).double()
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    biased_var = torch.ones(C, dtype=torch.float64)
    for X in batches(shape, 4):
        same_step(book, ref, X)
        biased_var = 0.9 * biased_var + 0.1 * X.var(dim=dims, unbiased=False)
        torch.testing.assert_close(book.moving_mean.flatten(), ref.running_mean)  # momentum 0.1
        torch.testing.assert_close(book.moving_var.flatten(), biased_var)  # biased, unlike PyTorch's
    assert list(book.state_dict()) == ["gamma", "beta"]  # the statistics are plain attributes
    book.eval()
    X = batches(shape, 1, seed=5)[0]
    with torch.no_grad():  # prediction mode comes from autograd being off
        expected = (X - book.moving_mean) / torch.sqrt(book.moving_var + 1e-5)
        torch.testing.assert_close(book(X), expected)
    assert (book(X) - expected).abs().max() > 0.01  # eval() alone changes nothing


def test_generated_module_holds_only_the_lectures_layers_models_and_shared_helpers():
    """The layers and models, and what a later section needs again after a kernel restart (the book's
    layer, the unpadded LeNet); what it may import: tests/test_repo.py's import-graph test."""
    path = Path(__file__).resolve().parent.parent / "d2l_ext" / "batch_norm.py"
    tree = ast.parse(path.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef)}
    defined -= {"forward", "extra_repr"}  # BatchNorm's methods, saved with d2l.add_to_class
    assert defined == {
        "batch_norm", "BatchNorm", "BNLeNetScratch", "BNLeNet", "BNLeNetAfter", "layer_norm", "LayerNorm",
        "check", "_check_eps", "_check_momentum", "_to_shape", "book_batch_norm", "BookBatchNorm",
        "unpadded_lenet",
    }  # fmt: skip


# ---- notebook 01's tools (tests/test_measure.py: each puts the model back, also when it fails) ----


def test_batch_stat_noise():
    features = torch.randn(64, 3, 2, 2)
    err, ratio = batch_stat_noise(features, 64, num_batches=3)
    assert err.shape == ratio.shape == (3, 3)
    torch.testing.assert_close(err, torch.zeros(3, 3), atol=1e-5, rtol=0)  # the whole pool: exact
    torch.testing.assert_close(ratio, torch.ones(3, 3))
    _, ratio = batch_stat_noise(torch.randn(64, 5), 1, num_batches=4)
    assert ratio.eq(0).all()  # a batch of one vector has no variance
    a, _ = batch_stat_noise(features, 8, num_batches=5, seed=1)
    b, _ = batch_stat_noise(features, 8, num_batches=5, seed=1)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="between 1 and 64"):
        batch_stat_noise(features, 65)


def test_bn_layers_inputs_and_exact_statistics_layer_by_layer():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 2), BatchNorm(2, num_dims=2)
    ).double()
    assert [type(m) for m in bn_layers(net)] == [nn.BatchNorm1d, BatchNorm]
    X = torch.randn(100, 3, dtype=torch.float64) * 2 + 1
    first, second = bn_inputs(net, X)  # in eval mode, on the running estimates
    assert net.training
    torch.testing.assert_close(first, net[0](X).detach())
    net.eval()
    torch.testing.assert_close(second, net[3](net[2](net[1](first))).detach())
    net.train()
    loader = [(X[i : i + 16], None) for i in range(0, 100, 16)]  # uneven last batch
    stats = exact_bn_statistics(net, loader)
    assert net.training and len(stats) == 2
    torch.testing.assert_close(net[1].running_mean, first.mean(0))
    torch.testing.assert_close(net[1].running_var, first.var(0))  # unbiased, PyTorch's convention
    net.eval()
    H2 = net[3](net[2](net[1](first)))  # with the first layer already on its exact statistics
    torch.testing.assert_close(net[4].moving_mean.flatten(), H2.mean(0))
    torch.testing.assert_close(net[4].moving_var.flatten(), H2.var(0))
    torch.testing.assert_close(stats[1], (H2.mean(0).float(), H2.var(0).float()))


def built_bn_lenet():
    model = BNLeNet()
    model(torch.zeros(2, 1, 28, 28))
    return model


def test_companion_outputs_vary_with_the_companions():
    model = built_bn_lenet().eval()
    pool = torch.randn(20, 1, 28, 28)
    out = companion_outputs(model, pool[0], pool[1:], batch_size=4, num_batches=5)
    assert out.shape == (5, 10) and not model.training
    torch.testing.assert_close(out.sum(1), torch.ones(5))
    assert out.std(0).max() > 0  # the same example, other companions, another output


def test_activation_recorder_and_sigmoid_inputs():
    model = built_bn_lenet()
    layers = sigmoid_inputs(model)
    assert list(layers) == ["conv 1", "conv 2", "fc 1", "fc 2"]
    assert all(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers.values())
    assert all(isinstance(m, nn.Conv2d | nn.Linear) for m in sigmoid_inputs(d2l.LeNet()).values())
    X = torch.randn(16, 1, 28, 28)
    with pytest.raises(KeyboardInterrupt), ActivationRecorder(layers) as recorder:
        model(X), model(X[:2])  # a pass on two examples is not recorded
        model.eval()
        model(X)  # nor one in eval mode
        raise KeyboardInterrupt  # the context removes the hooks even so
    model.train()
    model(X)
    curves = recorder.curves()  # nothing more recorded
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    units = {"conv 1": 6, "conv 2": 16, "fc 1": 120, "fc 2": 84}
    assert {name: (m.shape, s.shape) for name, (m, s) in curves.items()} == {
        name: ((1, n), (1, n)) for name, n in units.items()
    }
    means, stds = curves["fc 1"]
    torch.testing.assert_close(means, torch.zeros(1, 120), atol=1e-5, rtol=0)  # BN output: centred
    torch.testing.assert_close(stds, torch.full((1, 120), (16 / 15) ** 0.5), atol=1e-2, rtol=0)  # unbiased
    with ActivationRecorder(layers) as replayed:
        replayed.load_state_dict(recorder.state_dict())  # as a replayed run restores it
    assert all(torch.equal(a, b) for a, b in zip(replayed.curves()["fc 1"], curves["fc 1"]))
    with pytest.raises(ValueError, match=r"recordings are of layers \['conv 1'.*not \[\]"):
        ActivationRecorder({}).load_state_dict(recorder.state_dict())


def test_batch_noise_explorer_draws_both_statistics_at_once_and_on_every_move():
    g = torch.Generator().manual_seed(0)
    features = {"conv": torch.randn(64, 3, 4, 4, generator=g), "fc": torch.randn(64, 5, generator=g)}
    d2l.plt.close("all")
    explorer = batch_noise_explorer(features, sizes=[1, 8, 32], num_batches=10)
    try:
        slider = explorer.children[0]
        assert list(slider.options) == [1, 8, 32] and slider.value == 8
        left, right = d2l.plt.gcf().axes  # drawn without a kernel
        assert "batch size 8" in left.get_title()
        for ax in (left, right):
            assert len(ax.patches) == 2 * 60  # one 60-bin histogram per layer
        assert [t.get_text() for t in right.get_legend().get_texts()] == ["conv", "fc"]
        # density histograms: each layer's bars cover an area of 1 (the values are clamped into range)
        assert sum(p.get_width() * p.get_height() for p in left.patches[:60]) == pytest.approx(1.0)
        slider.value = 32
        assert "batch size 32" in d2l.plt.gcf().axes[0].get_title()
    finally:
        d2l.plt.close("all")


@pytest.mark.parametrize("shape", [(12, 5), (12, 3, 4, 4)])
def test_ghost_batches_normalize_each_group_alone_and_one_group_equals_torch(shape):
    bn, ref = pair(shape)[1], pair(shape)[1]
    ghost = GhostBatchNorm(bn, size=shape[0])  # one group: PyTorch's layer
    for X in batches(shape, 3):
        same_step(ghost, ref, X)
        torch.testing.assert_close(bn.weight.grad, ref.weight.grad)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    ghost.eval(), ref.eval()
    torch.testing.assert_close(ghost(X), ref(X))
    bn = pair(shape)[1]
    ghost = GhostBatchNorm(bn, size=3)  # four groups
    Y = ghost(X)
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    means, variances = [], []
    for g in range(4):
        group = X[3 * g : 3 * g + 3]
        expected = F.batch_norm(group, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        torch.testing.assert_close(Y[3 * g : 3 * g + 3], expected)
        means.append(group.mean(dim=dims)), variances.append(group.var(dim=dims))
    torch.testing.assert_close(bn.running_mean, 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * torch.stack(variances).mean(0))
    assert int(bn.num_batches_tracked) == 1


def test_ghost_batches_wrap_every_bn_layer_keep_eval_mode_and_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="size must be an int >= 2"):
        GhostBatchNorm(nn.BatchNorm1d(3), size=1)
    with pytest.raises(ValueError, match="multiple of it"):
        GhostBatchNorm(nn.BatchNorm1d(3), size=4)(torch.randn(6, 3))
    model = BNLeNet()
    with pytest.raises(ValueError, match="call the model once"):
        ghost_batches(model, 4)
    model(torch.zeros(2, 1, 28, 28))
    X = torch.randn(8, 1, 28, 28)
    model.eval()
    before = model(X)
    ghost_batches(model, 4)
    assert sum(isinstance(m, GhostBatchNorm) for m in model.net) == 4
    torch.testing.assert_close(model(X), before)
    model.train()
    assert model(X).shape == (8, 10)

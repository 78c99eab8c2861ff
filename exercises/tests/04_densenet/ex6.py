from otter.test_files import test_case

OK_FORMAT = False

name = "ex6"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="BN, ReLU, a 1x1 convolution to 4k channels, BN, ReLU, a 3x3 convolution to k.",
)
def test_ex6_block(bottleneck_conv_block, DenseNetB):
    import torch
    from torch import nn

    from d2l_ext.densenet import DenseNet
    from d2l_ext.measure import op_order

    ok = callable(bottleneck_conv_block)
    assert ok, "bottleneck_conv_block should be a function of num_channels"
    X = torch.randn(2, 16, 6, 6)
    blk = bottleneck_conv_block(8)
    ok = blk(X).shape == (2, 8, 6, 6)
    assert ok, "bottleneck_conv_block(8) maps 16 channels to 8, keeping 6x6"
    ok = op_order(blk, X) == ["BN", "ReLU", "conv", "BN", "ReLU", "conv"]
    assert ok, "the order of the layers"
    shapes = [tuple(m.weight.shape) for m in blk.modules() if isinstance(m, nn.Conv2d)]
    ok = shapes == [(32, 16, 1, 1), (8, 32, 3, 3)]
    assert ok, "a 1x1 convolution to 4k channels, then a 3x3 one to k"
    ok = isinstance(DenseNetB, type) and issubclass(DenseNetB, DenseNet)
    assert ok, "DenseNetB should be a subclass of d2l_ext.densenet.DenseNet"
    args = dict(num_channels=16, growth_rate=8, arch=(2, 3), stem_kernel=3, stem_stride=1)
    net, ref = (DenseNetB(**args), DenseNet(**args))
    X = torch.randn(2, 1, 28, 28)
    ok = net(X).shape == (2, 10)
    assert ok, "DenseNetB takes DenseNet's arguments"
    ops, ref_ops = (op_order(net, X), op_order(ref, X))
    ok = ops.count("conv") == ref_ops.count("conv") + 5 and ops.count("cat") == ref_ops.count("cat")
    assert ok, "every conv block of every dense block should be a bottleneck layer"


@test_case(points=None, hidden=False, failure_message="Train both with train_and_report.")
def test_ex6_runs(b_runs, DenseNetB):
    import torch

    from d2l_ext import experiment
    from d2l_ext.densenet import DenseNet
    from d2l_ext.measure import num_params

    cfg = experiment("densenet", verbose=False)
    ok = isinstance(b_runs, dict) and set(b_runs) == {"DenseNet", "DenseNet-B"}
    assert ok, "b_runs should have the keys 'DenseNet' and 'DenseNet-B'"
    ok = all(0.3 < r["val_acc"] <= 1 for r in b_runs.values())
    assert ok, "both models should be trained"
    size = cfg.data.get("resize", 28)
    X = torch.zeros(1, 1, size, size)
    ok = all(
        (
            b_runs[name]["params"] == num_params(Net(**cfg.model), X)
            for name, Net in (("DenseNet", DenseNet), ("DenseNet-B", DenseNetB))
        )
    )
    assert ok, "b_runs: the reports of the recipe's DenseNet and of DenseNetB with the recipe's arguments"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex1"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Keep the lecture's transition layer, with a MaxPool2d(2, 2) as its last layer.",
)
def test_ex1_blocks(max_transition_block, MaxPoolDenseNet):
    import torch

    from d2l_ext.densenet import DenseNet
    from d2l_ext.measure import op_order

    ok = callable(max_transition_block)
    assert ok, "max_transition_block should be a function of num_channels"
    Y = torch.randn(4, 23, 8, 8)
    blk = max_transition_block(10)
    ok = blk(Y).shape == (4, 10, 4, 4)
    assert ok, "max_transition_block(10) maps (4, 23, 8, 8) to (4, 10, 4, 4)"
    ok = op_order(blk, Y) == ["BN", "ReLU", "conv", "max-pool"]
    assert ok, "BN, ReLU, 1x1 convolution, max-pool"
    ok = isinstance(MaxPoolDenseNet, type) and issubclass(MaxPoolDenseNet, DenseNet)
    assert ok, "MaxPoolDenseNet should be a subclass of d2l_ext.densenet.DenseNet"
    args = dict(num_channels=16, growth_rate=8, arch=(2, 2, 2), stem_kernel=3, stem_stride=1)
    X = torch.randn(2, 1, 28, 28)
    net = MaxPoolDenseNet(**args)
    ok = net(X).shape == (2, 10)
    assert ok, "MaxPoolDenseNet takes DenseNet's arguments"
    ops, ref = (op_order(net, X), op_order(DenseNet(**args), X))
    ok = ops.count("avg-pool") == 0 and ops.count("max-pool") == ref.count("max-pool") + ref.count("avg-pool")
    assert ok, "every transition should max-pool; the rest of the model stays the lecture's"


@test_case(
    points=None,
    hidden=False,
    failure_message="Train both with train_and_report; pool after and before nn.Conv2d(8, 4, 1).",
)
def test_ex1_runs(pool_runs, commute_gap):
    ok = isinstance(pool_runs, dict) and set(pool_runs) == {"avg", "max"}
    assert ok, "pool_runs should have the keys 'avg' and 'max'"
    ok = all(0.3 < r["val_acc"] <= 1 for r in pool_runs.values())
    assert ok, "both models should be trained"
    ok = isinstance(commute_gap, dict) and set(commute_gap) == {"avg", "max"}
    assert ok, "commute_gap should have the keys 'avg' and 'max'"
    ok = commute_gap["avg"] < 1e-05
    assert ok, "commute_gap['avg']: compare pool(conv(X)) with conv(pool(X))"
    ok = commute_gap["max"] > 0.001
    assert ok, "commute_gap['max']: compare pool(conv(X)) with conv(pool(X))"

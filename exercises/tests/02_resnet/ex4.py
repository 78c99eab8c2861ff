from otter.test_files import test_case

OK_FORMAT = False

name = "ex4"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="PreActDown starts with BN and ReLU and ends with the addition; BN-ReLU before the head.",
)
def test_ex4_blocks(PreActDown, PreActResNet):
    import torch

    from d2l_ext.measure import op_order
    from d2l_ext.resnet import ResNet

    ok = isinstance(PreActDown, type)
    assert ok, "PreActDown should be a class, PreActDown(num_channels)"
    X = torch.randn(2, 16, 8, 8)
    ok = PreActDown(32)(X).shape == (2, 32, 4, 4)
    assert ok, "PreActDown(32) maps 16 to 32 channels, 8x8 to 4x4"
    ops = op_order(PreActDown(32), X)
    ok = ops[:3] == ["BN", "ReLU", "conv"] and ops[-1] == "add" and (ops.count("conv") == 3)
    assert ok, "BN, ReLU, then the convolutions (two 3x3, one 1x1); the addition comes last"
    ok = isinstance(PreActResNet, type) and issubclass(PreActResNet, ResNet)
    assert ok, "PreActResNet should be a subclass of d2l_ext.resnet.ResNet"
    net = PreActResNet(((1, 16), (1, 32)), stem_kernel=3, stem_stride=1)
    X = torch.randn(2, 1, 28, 28)
    ok = net(X).shape == (2, 10)
    assert ok, "PreActResNet(arch, ...) should give 10 class scores"
    ops = op_order(net, X)
    ok = ops[-4:] == ["BN", "ReLU", "global-avg-pool", "linear"]
    assert ok, "BN and ReLU before the head"
    ok = ops.count("add") == 2 and ops[ops.index("add") + 1] == "BN"
    assert ok, "nothing between a block's addition and the next BN"


@test_case(
    points=None,
    hidden=False,
    failure_message="Train both networks at both depths with degradation_run; final_loss of each run.",
)
def test_ex4_trend(preact_final):
    from d2l_ext import experiment

    depths = experiment("degradation", verbose=False).extra["depths"]
    shallow, deep = (6 * n + 2 for n in depths)
    keys = {(net, layers) for net in ("PlainNet", "PreActResNet") for layers in (shallow, deep)}
    ok = isinstance(preact_final, dict) and set(preact_final) == keys
    assert ok, "preact_final should have the keys ('PlainNet', layers) and ('PreActResNet', layers)"
    ok = all(0 < v < 10 for v in preact_final.values())
    assert ok, "the values are training losses"
    plain = preact_final["PlainNet", deep] / preact_final["PlainNet", shallow]
    preact = preact_final["PreActResNet", deep] / preact_final["PreActResNet", shallow]
    ok = plain > 1.25
    assert ok, "in your runs the deep plain network should train worse than the shallow one"
    ok = preact < plain
    assert ok, "compare how much each network loses from the shallow to the deep version"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex8"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Call the parent's apply_init, then set bn2.weight of every Residual to zero.",
)
def test_ex8_init(ZeroInitResNet):
    import torch
    from d2l import torch as d2l
    from torch import nn
    from torch.nn import functional as F

    from d2l_ext.measure import eval_mode
    from d2l_ext.resnet import Residual, ResNet

    ok = isinstance(ZeroInitResNet, type) and issubclass(ZeroInitResNet, ResNet)
    assert ok, "ZeroInitResNet should be a subclass of d2l_ext.resnet.ResNet"
    net = ZeroInitResNet(((2, 8), (1, 16)), stem_kernel=3, stem_stride=1)
    X = torch.randn(4, 1, 12, 12)
    net.apply_init([X], d2l.init_cnn)
    blocks = [m for m in net.modules() if isinstance(m, Residual)]
    ok = blocks and all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert ok, "every block's bn2 gamma should be 0"
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    ok = all(
        m.weight.abs().max() <= (6 / ((m.in_channels + m.out_channels) * 9)) ** 0.5 + 1e-06 for m in convs[:1]
    )
    assert ok, "the parent's initialization (init_cnn) should still run"
    H = F.relu(torch.randn(4, 8, 6, 6))
    with eval_mode(blocks[1]), torch.no_grad():
        ok = torch.equal(blocks[1](H), H)
        assert ok, "a block with an identity shortcut should start as the identity"


@test_case(
    points=None,
    hidden=False,
    failure_message="Train ResNet and ZeroInitResNet at the deeper depth with degradation_run.",
)
def test_ex8_trend(zero_init_losses):
    from d2l_ext import experiment

    steps = experiment("degradation", verbose=False).trainer["max_steps"]
    ok = isinstance(zero_init_losses, dict) and set(zero_init_losses) == {"ResNet", "ZeroInitResNet"}
    assert ok, "zero_init_losses should have the keys 'ResNet' and 'ZeroInitResNet'"
    runs = zero_init_losses.values()
    ok = all(isinstance(r, list) and len(r) == steps for r in runs)
    assert ok, "each value should be the list of per-step losses of a degradation_run"
    default, zero = (zero_init_losses["ResNet"], zero_init_losses["ZeroInitResNet"])
    k = max(1, len(default) // 10)
    ok = zero[0] < default[0]
    assert ok, "compare the losses at the first step"
    ok = max(zero[:k]) < max(default[:k])
    assert ok, "compare the highest losses of the first tenth of the steps"

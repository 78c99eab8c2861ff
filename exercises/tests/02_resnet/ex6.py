from otter.test_files import test_case

OK_FORMAT = False

name = "ex6"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Remove exactly the biases that BN cancels; count the stages of ResNet-18.",
)
def test_ex6_counts(ResNetNoBias, params_with_bias, params_without_bias):
    import torch
    from torch import nn

    from d2l_ext.measure import num_params
    from d2l_ext.resnet import ResNet, ResNet18

    ok = isinstance(ResNetNoBias, type) and issubclass(ResNetNoBias, ResNet)
    assert ok, "ResNetNoBias should be a subclass of d2l_ext.resnet.ResNet"
    X = torch.zeros(1, 1, 64, 64)
    ours = ResNet18()
    net = ResNetNoBias(((2, 64), (2, 128), (2, 256), (2, 512)))
    cancelled = sum(
        m.out_channels for m in ours.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    )
    ok = num_params(net, X) == num_params(ours, X) - cancelled
    assert ok, "remove exactly the biases that BN cancels"
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    ok = all((m.bias is None) == (m.kernel_size != (1, 1)) for m in convs)
    assert ok, "the 1x1 shortcuts keep their biases: no BN follows them"
    ok = params_with_bias == num_params(ours)
    assert ok, "params_with_bias: the count of ResNet18()"
    ok = params_without_bias == num_params(net)
    assert ok, "params_without_bias: the count of ResNetNoBias"


@test_case(
    points=None,
    hidden=False,
    failure_message="Only the biases change; the layers and their order stay those of the book's ResNet.",
)
def test_ex6_function(ResNetNoBias):
    import torch

    from d2l_ext.measure import train_mode
    from d2l_ext.resnet import ResNet

    arch = ((1, 8), (1, 16))
    ours, net = (ResNet(arch, stem_kernel=3, stem_stride=1), ResNetNoBias(arch, stem_kernel=3, stem_stride=1))
    X = torch.randn(8, 1, 12, 12)
    (ours(X), net(X))
    net.load_state_dict(ours.state_dict(), strict=False)
    with train_mode(ours), train_mode(net), torch.no_grad():
        ok = torch.allclose(ours(X), net(X), atol=1e-05)
    assert ok, "with the same weights, both should compute the same function in training mode"

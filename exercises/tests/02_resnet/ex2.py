from otter.test_files import test_case

OK_FORMAT = False

name = "ex2"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="ResNet34 builds like ResNet18, with 3, 4, 6 and 3 of the book's Residual blocks.",
)
def test_ex2(ResNet34, resnet34_params):
    import torch
    import torchvision
    from torch import nn

    from d2l_ext.measure import num_params
    from d2l_ext.resnet import ResNet

    ok = isinstance(ResNet34, type) and issubclass(ResNet34, ResNet)
    assert ok, "ResNet34 should be a subclass of d2l_ext.resnet.ResNet"
    net = ResNet34()
    ref = torchvision.models.resnet34(num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stages = list(net.net.children())[1:-1]
    ok = [len(s) for s in stages] == [len(getattr(ref, f"layer{i}")) for i in range(1, 5)]
    assert ok, "the number of residual blocks per stage differs from Table 1"
    biases = sum(m.out_channels for m in ref.modules() if isinstance(m, nn.Conv2d))
    shortcut_bn = sum((p.numel() for name, p in ref.named_parameters() if ".downsample.1." in name))
    expected = num_params(ref) + biases - shortcut_bn
    ok = num_params(net, torch.zeros(1, 1, 64, 64)) == expected
    assert ok, "the stages' widths or blocks differ"
    ok = resnet34_params == expected
    assert ok, "resnet34_params: the parameter count of ResNet34()"

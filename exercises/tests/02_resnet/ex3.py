from otter.test_files import test_case

OK_FORMAT = False

name = "ex3"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Three convolutions (1x1, 3x3, 1x1), each with BN; ReLU after two of them and the sum.",
)
def test_ex3_block(Bottleneck):
    import torch
    import torchvision
    from torch import nn

    from d2l_ext.measure import op_order

    ok = isinstance(Bottleneck, type)
    assert ok, "Bottleneck should be a class"
    X = torch.randn(2, 256, 8, 8)
    ok = Bottleneck(256)(X).shape == (2, 256, 8, 8)
    assert ok, "Bottleneck(256) should keep the shape"
    blk = Bottleneck(512, use_1x1conv=True, strides=2)
    ok = blk(X).shape == (2, 512, 4, 4)
    assert ok, "with strides=2, half the height and width"
    order = ["conv", "BN", "ReLU", "conv", "BN", "ReLU", "conv", "BN", "add", "ReLU"]
    ok = op_order(Bottleneck(256), X) == order
    assert ok, "the order of the layers in the block"
    down = nn.Sequential(nn.Conv2d(256, 512, 1, stride=2, bias=False), nn.BatchNorm2d(512))
    ref = torchvision.models.resnet.Bottleneck(256, 128, stride=2, downsample=down)
    shapes = sorted(tuple(m.weight.shape) for m in blk.modules() if isinstance(m, nn.Conv2d))
    ok = shapes == sorted(tuple(m.weight.shape) for m in ref.modules() if isinstance(m, nn.Conv2d))
    assert ok, "the convolutions' widths: num_channels // 4 inside, the stride on the 3x3 one"


@test_case(
    points=None,
    hidden=False,
    failure_message="ResNet50 has a 64-channel stem and 3, 4, 6 and 3 Bottleneck blocks.",
)
def test_ex3_resnet50(ResNet50):
    import torch
    import torchvision
    from torch import nn

    from d2l_ext.resnet import ResNet

    ok = isinstance(ResNet50, type) and issubclass(ResNet50, ResNet)
    assert ok, "ResNet50 should be a subclass of d2l_ext.resnet.ResNet"
    net = ResNet50()
    ok = net(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    assert ok, "ResNet50() should give 10 class scores"
    ref = torchvision.models.resnet50(num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def weights(m):
        return sorted(tuple(c.weight.shape) for c in m.modules() if isinstance(c, nn.Conv2d))

    ok = weights(net) == weights(ref)
    assert ok, "the stem, the blocks per stage or their widths differ"

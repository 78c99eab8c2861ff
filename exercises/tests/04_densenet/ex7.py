from otter.test_files import test_case

OK_FORMAT = False

name = "ex7"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Bottleneck layers in blocks of 6, 12, 24 and 16, growth rate 32, a 64-channel stem.",
)
def test_ex7(DenseNet121, densenet121_params, densenet121_macs):
    import torch
    import torchvision
    from torch import nn

    from d2l_ext.densenet import DenseNet
    from d2l_ext.measure import count_flops, num_params

    ok = isinstance(DenseNet121, type) and issubclass(DenseNet121, DenseNet)
    assert ok, "DenseNet121 should be a subclass of d2l_ext.densenet.DenseNet"
    net, ref = (DenseNet121(), torchvision.models.densenet121(num_classes=10))
    n = num_params(net, torch.zeros(2, 3, 32, 32))

    def layers(m):
        return sorted(
            (type(x).__name__, tuple(x.weight.shape))
            for x in m.modules()
            if isinstance(x, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
        )

    ok = layers(net) == layers(ref)
    assert ok, "the convolutions, BN layers and head should match torchvision's densenet121"
    ok = densenet121_params == n
    assert ok, "densenet121_params: the count of DenseNet121() for 3-channel images"
    with torch.device("meta"):
        macs = count_flops(torchvision.models.densenet121(num_classes=10), torch.empty(1, 3, 224, 224)) / 2
    ok = densenet121_macs == macs
    assert ok, "densenet121_macs: count_flops / 2 at (1, 3, 224, 224)"

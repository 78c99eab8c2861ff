from otter.test_files import test_case

OK_FORMAT = False

name = "ex4"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Measure both models at 224x224; extrapolate linearly to a batch of 32 images.",
)
def test_ex4(saved_bytes_224):
    import torch

    from d2l_ext.densenet import DenseNet
    from d2l_ext.measure import saved_activation_bytes
    from d2l_ext.resnet import ResNet18

    ok = isinstance(saved_bytes_224, dict) and set(saved_bytes_224) == {"DenseNet", "ResNet-18"}
    assert ok, "saved_bytes_224 should have the keys 'DenseNet' and 'ResNet-18'"
    for name, Net in (("DenseNet", DenseNet), ("ResNet-18", ResNet18)):
        one = saved_activation_bytes(Net(), torch.randn(1, 1, 224, 224))
        ok = abs(saved_bytes_224[name] / (32 * one) - 1) < 0.01
        assert ok, "the bytes for a batch of 32 images at 224x224"

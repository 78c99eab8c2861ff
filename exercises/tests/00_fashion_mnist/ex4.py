from otter.test_files import test_case

OK_FORMAT = False

name = "ex4"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Per class, over all its training images and all 784 pixels, in [0, 1].",
)
def test_ex4(class_mean, class_std):
    import torch

    import d2l_ext

    for t in (class_mean, class_std):
        ok = isinstance(t, torch.Tensor) and tuple(t.shape) == (10,)
        assert ok, "class_mean and class_std should each be a tensor of ten values"
    data = d2l_ext.FashionMNIST(verbose=False)
    images, targets = (data.train.images, data.train.targets)
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = ([], [])
    for c in range(10):
        hist = torch.bincount(images[targets == c].flatten(), minlength=256).double()
        n = hist.sum()
        m = (hist * values).sum() / n
        mean.append(m)
        std.append(((hist * (values - m) ** 2).sum() / (n - 1)).sqrt())
    ok = torch.allclose(class_mean.double(), torch.stack(mean), atol=0.0001)
    assert ok, "class_mean: the mean pixel value of each class, class c at index c"
    ok = torch.allclose(class_std.double(), torch.stack(std), atol=0.0001)
    assert ok, "class_std: the standard deviation of all pixels of each class, about its mean"

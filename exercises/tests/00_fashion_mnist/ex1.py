from otter.test_files import test_case

OK_FORMAT = False

name = "ex1"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Average each class over all of its training images, with pixels in [0, 1].",
)
def test_ex1_mean_images(mean_images):
    import torch

    import d2l_ext

    ok = isinstance(mean_images, torch.Tensor) and tuple(mean_images.shape) == (10, 28, 28)
    assert ok, "mean_images should be a tensor of shape (10, 28, 28), one image per class"
    data = d2l_ext.FashionMNIST(verbose=False)
    images, targets = (data.train.images, data.train.targets)
    ref = torch.stack([images[targets == c].sum(0, dtype=torch.float64) for c in range(10)])
    ref /= 255 * torch.bincount(targets, minlength=10).double()[:, None, None]
    ok = torch.allclose(mean_images.double(), ref, atol=1e-05)
    assert ok, "mean_images: class c at index c, pixel values in [0, 1], all training images"


@test_case(
    points=None,
    hidden=False,
    failure_message="The Euclidean distance of two flattened mean images; the pair is the closest two.",
)
def test_ex1_pairs(mean_images, distances, closest_pair):
    import itertools

    import torch

    import d2l_ext

    ok = isinstance(distances, torch.Tensor) and tuple(distances.shape) == (10, 10)
    assert ok, "distances should be a (10, 10) tensor"
    flat = mean_images.double().flatten(1)
    ok = all(
        (
            abs(distances[i, j].item() - (flat[i] - flat[j]).norm().item()) < 0.001
            for i, j in itertools.product(range(10), repeat=2)
        )
    )
    assert ok, "distances[i, j]: the Euclidean distance between mean images i and j"
    names = d2l_ext.FashionMNIST(verbose=False).text_labels(range(10))
    pairs = [(distances[i, j].item(), {names[i], names[j]}) for i in range(10) for j in range(i)]
    ok = isinstance(closest_pair, set) and closest_pair == min(pairs, key=lambda p: p[0])[1]
    assert ok, "closest_pair: the set of the two class names whose mean images are closest"

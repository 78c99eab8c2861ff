from otter.test_files import test_case

OK_FORMAT = False

name = "ex7"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Follow the rule with batch_stat_noise's defaults, over sizes in increasing order.",
)
def test_ex7(features, sizes, smallest):
    import torch

    from d2l_ext.batch_norm_tools import batch_stat_noise

    ok = isinstance(features, dict) and set(features) == {"conv 1", "fc 1"}
    assert ok, "features should have the keys 'conv 1' and 'fc 1'"
    ok = isinstance(features["conv 1"], torch.Tensor) and features["conv 1"].dim() == 4
    ok = ok and isinstance(features["fc 1"], torch.Tensor) and (features["fc 1"].dim() == 2)
    assert ok, "features: the inputs of a convolutional (N, C, H, W) and a linear (N, C) BN layer"
    ok = isinstance(sizes, list) and sizes == sorted(sizes) and all(isinstance(b, int) for b in sizes)
    ok = ok and all(1 <= b <= min(len(f) for f in features.values()) for b in sizes)
    assert ok, "sizes: the batch sizes, increasing, each at most the number of examples"
    ok = isinstance(smallest, dict) and set(smallest) == set(features)
    assert ok, "smallest should have the same keys as features"
    for name, f in features.items():
        first = None
        for b in sizes:
            _, ratio = batch_stat_noise(f, b)
            if ((ratio - 1).abs() <= 0.1).float().mean().item() >= 0.8:
                first = b
                break
        ok = smallest[name] == first
        assert ok, "smallest[name] does not follow from features[name] by the 80%-within-10% rule"

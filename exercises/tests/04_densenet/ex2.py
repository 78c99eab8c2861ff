from otter.test_files import test_case

OK_FORMAT = False

name = "ex2"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Follow the size through the stem, the max-pool and each transition, or try sizes.",
)
def test_ex2(min_inputs):
    import torch

    from d2l_ext.densenet import DenseNet

    archs = ((4, 4, 4, 4), (2, 2, 2, 2, 2, 2))
    ok = isinstance(min_inputs, dict) and set(min_inputs) == set(archs)
    assert ok, "min_inputs should be keyed by the two arch tuples"
    for arch in archs:
        m = min_inputs[arch]
        ok = isinstance(m, int) and m > 1
        assert ok, "each value is a size in pixels, an int"
        net = DenseNet(arch=arch, stem_kernel=3, stem_stride=1).eval()
        with torch.no_grad():
            try:
                fits = net.net(torch.zeros(1, 1, m, m)).shape == (1, 10)
            except RuntimeError:
                fits = False
            ok = fits
            assert ok, "an input of that size is too small for the model"
            try:
                net.net(torch.zeros(1, 1, m - 1, m - 1))
                smallest = False
            except RuntimeError:
                smallest = True
            ok = smallest
            assert ok, "a smaller input would still work: look for the smallest"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex1"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Build the four paths with the book's widths; count them on a (1, 192, 28, 28) input.",
)
def test_ex1_inception(Inception, inception_cost):
    import torch

    from d2l_ext.measure import num_params

    ok = isinstance(Inception, type)
    assert ok, "Inception should be a class, Inception(c1, c2, c3, c4)"
    blk = Inception(64, (96, 128), (16, 32), 32)
    X = torch.randn(1, 192, 28, 28)
    ok = blk(X).shape == (1, 256, 28, 28)
    assert ok, "the output should have 64 + 128 + 32 + 32 channels, 28x28"
    convs = [(1, 192, 64), (1, 192, 96), (3, 96, 128), (1, 192, 16), (5, 16, 32), (1, 192, 32)]
    params = sum((k * k * ci * co + co for k, ci, co in convs))
    flops = sum((2 * 28 * 28 * k * k * ci * co for k, ci, co in convs))
    ok = num_params(blk) == params
    assert ok, "Inception's layers: six convolutions with the book's widths"
    ok = isinstance(inception_cost, dict)
    assert ok, "inception_cost should be a dict with 'params' and 'flops'"
    ok = inception_cost == {"params": params, "flops": flops}
    assert ok, "inception_cost: count again"


@test_case(
    points=None, hidden=False, failure_message="Count Residual(256, use_1x1conv=True) on the same input."
)
def test_ex1_residual(residual_cost):
    convs = [(3, 192, 256), (3, 256, 256), (1, 192, 256)]
    params = sum((k * k * ci * co + co for k, ci, co in convs)) + 2 * (256 + 256)
    flops = sum((2 * 28 * 28 * k * k * ci * co for k, ci, co in convs))
    ok = isinstance(residual_cost, dict)
    assert ok, "residual_cost should be a dict with 'params' and 'flops'"
    ok = residual_cost == {"params": params, "flops": flops}
    assert ok, "residual_cost: count again"

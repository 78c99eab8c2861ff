from otter.test_files import test_case

OK_FORMAT = False

name = "ex2"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Build both blocks, call them once on a 64-channel input, read conv2.weight.shape.",
)
def test_ex2_shapes(book_shape, ours_shape):
    import torch
    from d2l import torch as d2l

    from d2l_ext.resnext import ResNeXtBlock

    X = torch.randn(1, 64, 8, 8)
    book, ours = (d2l.ResNeXtBlock(64, 8, 1), ResNeXtBlock(64, 8, 1))
    (book(X), ours(X))
    ok = isinstance(book_shape, tuple) and isinstance(ours_shape, tuple)
    assert ok, "book_shape and ours_shape should be tuples, as tuple(weight.shape) gives them"
    ok = book_shape == tuple(book.conv2.weight.shape)
    assert ok, "book_shape: the book's 3x3 weight"
    ok = ours_shape == tuple(ours.conv2.weight.shape)
    assert ok, "ours_shape: our 3x3 weight"


@test_case(
    points=None,
    hidden=False,
    failure_message="Compare the groups each block passes to nn.Conv2d, for bot_mul=1.",
)
def test_ex2_agree(readings_agree):
    from d2l import torch as d2l

    from d2l_ext.resnext import ResNeXtBlock

    ok = callable(readings_agree)
    assert ok, "readings_agree should be a function of (num_channels, groups)"
    for c in (4, 12, 16, 36, 48, 64, 100, 256):
        for g in (g for g in range(1, c + 1) if c % g == 0):
            same = d2l.ResNeXtBlock(c, g, 1).conv2.groups == ResNeXtBlock(c, g, 1).conv2.groups
            ok = readings_agree(c, g) == same
            assert ok, "readings_agree is wrong for some (num_channels, groups)"

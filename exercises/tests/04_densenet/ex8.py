from otter.test_files import test_case

OK_FORMAT = False

name = "ex8"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="features concatenates the flattened input and each layer's output.",
)
def test_ex8(DenseMLP, mlp_report):
    import torch
    from d2l import torch as d2l

    ok = isinstance(DenseMLP, type) and issubclass(DenseMLP, d2l.Classifier)
    assert ok, "DenseMLP should be a subclass of d2l.Classifier"
    net = DenseMLP(num_layers=2, growth=16)
    X = torch.randn(8, 1, 28, 28)
    ok = net(X).shape == (8, 10)
    assert ok, "DenseMLP(...)(X) should give 10 class scores"
    H = net.features(X)
    ok = H.shape == (8, 784 + 2 * 16)
    assert ok, "features(X): the flattened input and the layers' outputs"
    ok = torch.equal(H[:, :784], X.flatten(1))
    assert ok, "features(X) should start with the flattened input"
    widths = [784, 784 + 16]
    expected = sum(2 * c + c * 16 + 16 for c in widths) + 2 * (784 + 32) + (784 + 32) * 10 + 10
    ok = sum(p.numel() for p in net.parameters()) == expected
    assert ok, "each layer: BN, ReLU, a linear layer"
    ok = isinstance(mlp_report, dict) and 0.5 < mlp_report.get("val_acc", 0) <= 1
    assert ok, "mlp_report: train DenseMLP()"

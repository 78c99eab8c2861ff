from otter.test_files import test_case

OK_FORMAT = False

name = "ex5"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="center subtracts the batch mean, scale divides by the batch std; both is BN.",
)
def test_ex5_layer(LiteBatchNorm):
    import torch

    ok = isinstance(LiteBatchNorm, type) and issubclass(LiteBatchNorm, torch.nn.Module)
    assert ok, "LiteBatchNorm should be a class, a subclass of BatchNorm"
    gen = torch.Generator().manual_seed(0)
    for shape in [(32, 5), (8, 3, 6, 6)]:
        X = 3 * torch.randn(*shape, generator=gen) + 2
        C, view = (shape[1], (1, shape[1]) + (1,) * (len(shape) - 2))
        dims = (0,) if len(shape) == 2 else (0, 2, 3)
        ref = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(C, affine=False)
        bn = ref(X)
        mean = X.mean(dim=dims, keepdim=True)
        std = (X.var(dim=dims, unbiased=False, keepdim=True) + ref.eps).sqrt()
        run_mean, run_std = (ref.running_mean.view(view), (ref.running_var.view(view) + ref.eps).sqrt())
        cases = [
            (True, True, bn, (X - run_mean) / run_std),
            (True, False, X - mean, X - run_mean),
            (False, True, X / std, X / run_std),
        ]
        for center, scale, train_out, eval_out in cases:
            layer = LiteBatchNorm(C, len(shape), center=center, scale=scale)
            Y = layer(X)
            ok = isinstance(Y, torch.Tensor) and torch.allclose(Y, train_out, atol=0.0001)
            assert ok, "training mode: normalize with the minibatch's mean and biased variance"
            layer.eval()
            Y = layer(X)
            ok = isinstance(Y, torch.Tensor) and torch.allclose(Y, eval_out, atol=0.0001)
            assert ok, "prediction mode: use the running estimates, updated as PyTorch does"


@test_case(points=None, hidden=False, failure_message="One run per kind of lite BN, under the same settings.")
def test_ex5_runs(lite_accuracy):
    ok = isinstance(lite_accuracy, dict) and set(lite_accuracy) == {"both", "mean only", "std only"}
    assert ok, "lite_accuracy should have the keys 'both', 'mean only' and 'std only'"
    ok = all(isinstance(a, float) and 0 <= a <= 1 for a in lite_accuracy.values())
    assert ok, "accuracy should hold validation accuracies, fractions between 0 and 1"

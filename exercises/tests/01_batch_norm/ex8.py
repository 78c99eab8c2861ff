from otter.test_files import test_case

OK_FORMAT = False

name = "ex8"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="GroupNorm and LayerNorm take statistics per example; BN across the batch.",
)
def test_ex8_models(lenet_with_norm):
    import torch

    from d2l_ext.batch_norm import LayerNorm
    from d2l_ext.batch_norm_tools import bn_layers

    ok = callable(lenet_with_norm)
    assert ok, "lenet_with_norm should be a function of kind (and **kwargs)"
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(8, 1, 28, 28, generator=gen)
    other = torch.cat([X[:1], torch.randn(7, 1, 28, 28, generator=gen)])
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, LayerNorm)
    for kind in ("batch", "group", "layer"):
        net = lenet_with_norm(kind)
        ok = isinstance(net, torch.nn.Module)
        assert ok, "lenet_with_norm(kind) should return the model"
        net.train()
        with torch.no_grad():
            gap = (net(X)[0] - net(other)[0]).abs().max().item()
        groups = [m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
        count = len(bn_layers(net)) + sum(isinstance(m, norms) for m in net.modules())
        ok = count == 4
        assert ok, "every one of the four BN layers should be replaced, one for one"
        if kind == "batch":
            ok = len(bn_layers(net)) == 4 and gap > 0.0001
            assert ok, "kind 'batch' should be BN-LeNet as it is"
        elif kind == "group":
            ok = not bn_layers(net) and groups == [2, 2, 2, 2] and (gap < 1e-05)
            assert ok, "kind 'group': a GroupNorm of two groups in place of each BN layer"
        else:
            ok = not bn_layers(net) and all(g == 1 for g in groups) and (gap < 1e-05)
            assert ok, "kind 'layer': each example normalized over all its values, no batch"


@test_case(points=None, hidden=False, failure_message="Nine runs, each kind at batch sizes 2, 8 and 128.")
def test_ex8_runs(norm_accuracy):
    ok = isinstance(norm_accuracy, dict) and set(norm_accuracy) == {"batch", "group", "layer"}
    assert ok, "norm_accuracy should have the keys 'batch', 'group' and 'layer'"
    ok = all(isinstance(r, dict) and sorted(r) == [2, 8, 128] for r in norm_accuracy.values())
    assert ok, "norm_accuracy[kind] should have the batch sizes 2, 8 and 128 as its keys"
    values = [a for r in norm_accuracy.values() for a in r.values() if a is not None]
    ok = all(isinstance(a, float) and 0 <= a <= 1 for a in values)
    assert ok, "accuracies are fractions between 0 and 1 (or None for a diverged run)"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex10"
points = None


@test_case(
    points=None, hidden=False, failure_message="BNLeNet or BNLeNetAfter, every sigmoid swapped for a ReLU."
)
def test_ex10_models(relu_bn_lenet):
    import torch

    from d2l_ext.batch_norm_tools import bn_layers

    ok = callable(relu_bn_lenet)
    assert ok, "relu_bn_lenet should be a function of placement (and **kwargs)"
    for placement in ("before", "after"):
        net = relu_bn_lenet(placement)
        ok = isinstance(net, torch.nn.Module)
        assert ok, "relu_bn_lenet(placement) should return the model"
        net(torch.zeros(2, 1, 28, 28))
        bns = {id(m) for m in bn_layers(net)}
        seq = [m for m in net.modules() if id(m) in bns or isinstance(m, torch.nn.ReLU | torch.nn.Sigmoid)]
        kinds = ["BN" if id(m) in bns else type(m).__name__ for m in seq]
        ok = "Sigmoid" not in kinds and kinds.count("BN") == 4 and (kinds.count("ReLU") == 4)
        assert ok, "four BN layers and four ReLUs, no sigmoid"
        pair = ["BN", "ReLU"] if placement == "before" else ["ReLU", "BN"]
        ok = kinds == pair * 4
        assert ok, "BN should come right before each ReLU for 'before', right after it for 'after'"


@test_case(
    points=None,
    hidden=False,
    failure_message="ahead, spread and beyond_spread follow from placement by their definitions.",
)
def test_ex10_verdict(placement, ahead, spread, beyond_spread):
    ok = isinstance(placement, dict) and set(placement) == {"before", "after"}
    assert ok, "placement should have the keys 'before' and 'after'"
    runs = list(placement.values())
    ok = all(isinstance(r, list) and len(r) >= 2 for r in runs) and len(runs[0]) == len(runs[1])
    assert ok, "placement: two lists of accuracies, one per seed, two seeds or more, the same seeds"
    ok = all(isinstance(a, float) and 0 <= a <= 1 for r in runs for a in r)
    assert ok, "validation accuracies are fractions between 0 and 1"
    after, before = (placement["after"], placement["before"])
    ok = (
        isinstance(ahead, float)
        and abs(ahead - (sum(after) / len(after) - sum(before) / len(before))) < 1e-09
    )
    assert ok, "ahead: the mean over seeds of 'after' minus that of 'before'"
    ok = isinstance(spread, float) and abs(spread - max(max(r) - min(r) for r in runs)) < 1e-09
    assert ok, "spread: the larger of the two placements' max - min over seeds"
    ok = beyond_spread is (abs(ahead) > spread)
    assert ok, "beyond_spread: whether abs(ahead) is larger than spread (True or False)"

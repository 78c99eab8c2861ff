from otter.test_files import test_case

OK_FORMAT = False

name = "ex2"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Freeze gamma and beta of every BN layer before training; train the rest.",
)
def test_ex2_frozen(frozen):
    import torch

    from d2l_ext.batch_norm_tools import bn_layers

    ok = isinstance(frozen, torch.nn.Module) and len(bn_layers(frozen)) == 4
    assert ok, "frozen should be a trained BNLeNet, with its four BN layers"
    bns = bn_layers(frozen)
    ok = all(int(bn.num_batches_tracked) > 0 for bn in bns)
    assert ok, "frozen should be trained (its BN layers have seen no batch)"
    pairs = [(bn.weight, bn.bias) if hasattr(bn, "weight") else (bn.gamma, bn.beta) for bn in bns]
    ok = all((bool((g == 1).all()) and bool((b == 0).all()) for g, b in pairs))
    assert ok, "after training every gamma should still be 1 and every beta 0"
    fixed = sum(p.numel() for p in frozen.parameters() if not p.requires_grad)
    ok = fixed == sum((g.numel() + b.numel() for g, b in pairs))
    assert ok, "fix exactly the gammas and betas of the BN layers, nothing else"


@test_case(
    points=None,
    hidden=False,
    failure_message="Two runs under the same settings and data, one with gamma and beta fixed.",
)
def test_ex2_runs(learned, fixed_accuracy):
    import torch

    from d2l_ext.batch_norm_tools import bn_layers

    ok = isinstance(learned, torch.nn.Module) and len(bn_layers(learned)) == 4
    assert ok, "learned should be the BNLeNet trained as it is"
    ok = all(p.requires_grad for p in learned.parameters())
    assert ok, "learned should train all of its parameters"
    ok = isinstance(fixed_accuracy, dict) and set(fixed_accuracy) == {"learned", "fixed"}
    assert ok, "fixed_accuracy should be a dict with the keys 'learned' and 'fixed'"
    ok = all(isinstance(a, float) and 0 <= a <= 1 for a in fixed_accuracy.values())
    assert ok, "accuracy should hold validation accuracies, fractions between 0 and 1"

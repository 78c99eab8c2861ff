from otter.test_files import test_case

OK_FORMAT = False

name = "ex6"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Every BatchNorm of BNLeNetScratch with momentum 0.9, trained, then evaluated twice.",
)
def test_ex6(momentum_net, momentum_accuracy):
    import torch

    from d2l_ext.batch_norm import BatchNorm

    ok = isinstance(momentum_net, torch.nn.Module)
    assert ok, "momentum_net should be the trained BNLeNetScratch"
    bns = [m for m in momentum_net.modules() if isinstance(m, BatchNorm)]
    ok = len(bns) == 4 and all(m.momentum == 0.9 for m in bns)
    assert ok, "all four of our BatchNorm layers should have momentum 0.9"
    ok = all(int(m.num_batches_tracked) > 0 for m in bns)
    assert ok, "momentum_net should be trained"
    ok = isinstance(momentum_accuracy, dict) and set(momentum_accuracy) == {"running estimates", "exact"}
    assert ok, "momentum_accuracy should have the keys 'running estimates' and 'exact'"
    ok = all(isinstance(a, float) and 0 <= a <= 1 for a in momentum_accuracy.values())
    assert ok, "accuracy should hold test accuracies, fractions between 0 and 1"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex3"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Both networks, all five rates; per run a list of validation accuracies or None.",
)
def test_ex3_histories(histories):
    ok = isinstance(histories, dict) and set(histories) == {"LeNet", "BN-LeNet"}
    assert ok, "histories should have the keys 'LeNet' and 'BN-LeNet'"
    rates = [0.03, 0.1, 0.3, 1, 3]
    ok = all(sorted(runs) == rates for runs in histories.values())
    assert ok, "histories[name] should have the five learning rates as its keys"
    runs = [accs for by_lr in histories.values() for accs in by_lr.values() if accs is not None]
    ok = all(isinstance(accs, list) and len(accs) >= 2 for accs in runs)
    assert ok, "a run's history: a list with one validation accuracy per epoch, several epochs"
    ok = all(isinstance(a, float) and 0 <= a <= 1 for accs in runs for a in accs)
    assert ok, "validation accuracies are fractions between 0 and 1"


@test_case(
    points=None,
    hidden=False,
    failure_message="The largest rate whose run neither diverged nor ended below 50% accuracy.",
)
def test_ex3_largest(histories, largest_lr):
    ok = isinstance(largest_lr, dict) and set(largest_lr) == set(histories)
    assert ok, "largest_lr should have the same keys as histories"
    for name, by_lr in histories.items():
        works = [lr for lr, accs in by_lr.items() if accs is not None and accs[-1] >= 0.5]
        ok = largest_lr[name] == max(works, default=None)
        assert ok, "largest_lr[name] does not follow from histories[name] by the 50% rule"
    bn, plain = (largest_lr["BN-LeNet"], largest_lr["LeNet"])
    ok = bn is not None and (plain is None or bn >= plain)
    assert ok, "BN-LeNet should train at least at every rate LeNet trains at: check the runs"

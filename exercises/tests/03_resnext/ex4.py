from otter.test_files import test_case

OK_FORMAT = False

name = "ex4"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Train the recipe's ResNeXt with groups 1, 8 and 16; keep each train_and_report.",
)
def test_ex4(group_runs):
    import torch

    from d2l_ext import experiment
    from d2l_ext.measure import count_flops, num_params
    from d2l_ext.resnext import ResNeXt

    cfg = experiment("resnext", verbose=False)
    ok = isinstance(group_runs, dict) and set(group_runs) == {1, 8, 16}
    assert ok, "group_runs should have the keys 1, 8 and 16"
    X = torch.zeros(1, 1, 28, 28)
    for g, report in group_runs.items():
        net = ResNeXt(**cfg.model | {"groups": g})
        ok = report["MFLOPs"] == count_flops(net, X) / 1000000.0 and report["params"] == num_params(net)
        assert ok, "each report should be that of the recipe's ResNeXt with its number of groups"
        ok = 0.3 < report["val_acc"] <= 1
        assert ok, "a trained model should be well above chance (0.1)"
        ok = report["images_per_s"] > 0
        assert ok, "images_per_s: images seen over seconds of training"

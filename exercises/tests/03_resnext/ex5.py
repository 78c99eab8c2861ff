from otter.test_files import test_case

OK_FORMAT = False

name = "ex5"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Raise bot_mul (or widen the stages) until the FLOPs match, keeping groups above 1.",
)
def test_ex5(matched_model, matched_runs):
    import torch

    from d2l_ext import experiment
    from d2l_ext.measure import count_flops
    from d2l_ext.resnet import ResNet
    from d2l_ext.resnext import ResNeXt

    ok = isinstance(matched_model, dict)
    assert ok, "matched_model should be a dict of ResNeXt's keyword arguments"
    net = ResNeXt(**matched_model)
    ok = net.groups > 1
    assert ok, "use more than one group"
    X = torch.zeros(1, 1, 28, 28)
    resnet = ResNet(**experiment("resnet", verbose=False).model)
    ratio = count_flops(net, X) / count_flops(resnet, X)
    ok = 0.9 <= ratio <= 1.1
    assert ok, "the FLOPs should be within 10% of the recipe's ResNet"
    ok = isinstance(matched_runs, dict) and set(matched_runs) == {"ResNet", "ResNeXt"}
    assert ok, "matched_runs should have the keys 'ResNet' and 'ResNeXt'"
    ok = abs(matched_runs["ResNeXt"]["MFLOPs"] - count_flops(net, X) / 1000000.0) < 1e-09
    assert ok, "train the matched model"
    ok = all(0.3 < r["val_acc"] <= 1 for r in matched_runs.values())
    assert ok, "both should be trained"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex9"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Record both norms in a Callback's after_batch; pass it to degradation_run.",
)
def test_ex9_norms(first_layer):
    from d2l_ext import experiment

    steps = experiment("degradation", verbose=False).trainer["max_steps"]
    ok = isinstance(first_layer, dict) and set(first_layer) == {"grad_norm", "weight_norm"}
    assert ok, "first_layer should have the keys 'grad_norm' and 'weight_norm'"
    g, w = (first_layer["grad_norm"], first_layer["weight_norm"])
    ok = len(g) == len(w) == steps and all(isinstance(v, float) for v in g + w)
    assert ok, "one float per step for each norm"
    ok = w[-1] > 2 * w[0]
    assert ok, "follow the weight norm from the first step to the last"
    ok = g[-1] < g[0] / 10
    assert ok, "follow the gradient norm from the first step to the last"


@test_case(
    points=None,
    hidden=False,
    failure_message="Compare the loss at w and at 2w in training mode, and the gradient's direction with w.",
)
def test_ex9_invariance(scale_test):
    ok = isinstance(scale_test, dict) and set(scale_test) == {"loss_change", "cosine"}
    assert ok, "scale_test should have the keys 'loss_change' and 'cosine'"
    ok = 0 <= scale_test["loss_change"] < 0.001
    assert ok, "loss_change: the relative change when w is doubled"
    ok = abs(scale_test["cosine"]) < 0.001
    assert ok, "cosine: between the weight and its gradient, flattened"

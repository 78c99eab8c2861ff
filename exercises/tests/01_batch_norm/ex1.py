from otter.test_files import test_case

OK_FORMAT = False

name = "ex1"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="One bias per output of each conv or linear layer that a BN layer follows.",
)
def test_ex1_count(bias_params):
    import torch

    from d2l_ext.batch_norm import BNLeNet
    from d2l_ext.batch_norm_tools import bn_layers

    ok = isinstance(bias_params, int) and (not isinstance(bias_params, bool))
    assert ok, "bias_params should be an int"
    net = BNLeNet()
    net(torch.zeros(2, 1, 28, 28))
    ok = bias_params == sum(bn.num_features for bn in bn_layers(net))
    assert ok, "count the biases of exactly the layers that come right before a BN layer"


@test_case(
    points=None,
    hidden=False,
    failure_message="In training mode BN subtracts each channel's batch mean. What is left of a shift?",
)
def test_ex1_shift(shift_gap):
    ok = isinstance(shift_gap, float)
    assert ok, "shift_gap should be a float, e.g. (Y1 - Y2).abs().max().item()"
    ok = 0 <= shift_gap < 0.0001
    assert ok, "shift_gap: compare BN's outputs in training mode, with and without the shift"

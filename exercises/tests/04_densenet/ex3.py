from otter.test_files import test_case

OK_FORMAT = False

name = "ex3"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Count each conv block of the four dense blocks in order, and each child of the net.",
)
def test_ex3(conv_block_params, resnet_stage_params):
    import torch

    from d2l_ext.measure import num_params
    from d2l_ext.resnet import ResNet18

    ok = isinstance(conv_block_params, list) and len(conv_block_params) == 16
    assert ok, "conv_block_params should be a list of 16 counts, one per conv block"
    expected = [
        2 * c + 9 * c * 32 + 32 for start in (64, 96, 112, 120) for c in range(start, start + 4 * 32, 32)
    ]
    ok = conv_block_params == expected
    assert ok, "conv_block_params: the conv blocks of the lecture's model, in order"
    resnet18 = ResNet18()
    resnet18(torch.zeros(1, 1, 96, 96))
    stages = {name: num_params(stage) for name, stage in resnet18.net.named_children()}
    ok = resnet_stage_params == stages
    assert ok, "resnet_stage_params: one count per child of resnet18.net"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex1"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Compare 9 c^2 / g with c^2 for the numbers of groups that divide 256.",
)
def test_ex1(smallest_groups):
    from torch import nn

    ok = isinstance(smallest_groups, int)
    assert ok, "smallest_groups should be an int"
    one = nn.Conv2d(256, 256, 1, device="meta").weight.numel()
    fewer = [
        g
        for g in range(1, 257)
        if 256 % g == 0 and nn.Conv2d(256, 256, 3, groups=g, device="meta").weight.numel() < one
    ]
    ok = smallest_groups == fewer[0]
    assert ok, "smallest_groups: the smallest g with fewer weights than the 1x1"

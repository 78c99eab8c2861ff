from otter.test_files import test_case

OK_FORMAT = False

name = "ex6"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Profile the four cases; take the operator with the largest self_cpu_time_total.",
)
def test_ex6(profile_top):
    keys = {(layout, g) for layout in ("NCHW", "NHWC") for g in (1, 32)}
    ok = isinstance(profile_top, dict) and set(profile_top) == keys
    assert ok, "profile_top should have the keys ('NCHW', 1), ('NCHW', 32), ('NHWC', 1), ('NHWC', 32)"
    for name, share in profile_top.values():
        ok = isinstance(name, str) and "conv" in name
        assert ok, "the top operator of each profile is a convolution"
        ok = 0.5 < share <= 1
        assert ok, "the share is the top operator's self CPU time over the total"

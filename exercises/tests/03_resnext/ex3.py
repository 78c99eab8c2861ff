from otter.test_files import test_case

OK_FORMAT = False

name = "ex3"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Divide the grouped convolution's FLOPs by the whole block's, for each bot_mul.",
)
def test_ex3(grouped_share, dominant):
    keys = {0.25, 0.5, 1, 2}
    ok = isinstance(grouped_share, dict) and set(grouped_share) == keys
    assert ok, "grouped_share should have the keys 0.25, 0.5, 1 and 2"
    c, g = (256, 32)
    for bot_mul, share in grouped_share.items():
        b = round(c * bot_mul)
        three = 9 * b * b / g
        ones = c * b + b * c
        ok = abs(share - three / (three + ones)) < 1e-06
        assert ok, "grouped_share: grouped FLOPs over the block's"
    ok = isinstance(dominant, dict) and set(dominant) == {0.25, 2}
    ok = ok and set(dominant.values()) <= {"1x1", "3x3"}
    assert ok, "dominant: '1x1' or '3x3' at 0.25 and at 2"
    ok = all(dominant[m] == ("3x3" if grouped_share[m] > 0.5 else "1x1") for m in dominant)
    assert ok, "dominant should follow from your shares"

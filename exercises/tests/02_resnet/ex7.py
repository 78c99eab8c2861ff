from otter.test_files import test_case

OK_FORMAT = False

name = "ex7"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="final_loss of each run at 8, 32 and 56 layers; read gap_grows from those numbers.",
)
def test_ex7(depth_final, gap_grows):
    keys = {(net, layers) for net in ("PlainNet", "ResNet") for layers in (8, 32, 56)}
    ok = isinstance(depth_final, dict) and set(depth_final) == keys
    assert ok, (
        "depth_final should have the keys ('PlainNet', layers) and ('ResNet', layers), layers 8, 32, 56"
    )
    ok = all(0 < v < 20 for v in depth_final.values())
    assert ok, "the values are training losses"
    plain = [depth_final["PlainNet", k] for k in (8, 32, 56)]
    ok = plain[0] < plain[1] < plain[2]
    assert ok, "in your runs the plain network should degrade with depth"
    gaps = [depth_final["PlainNet", k] - depth_final["ResNet", k] for k in (8, 32, 56)]
    ok = isinstance(gap_grows, bool)
    assert ok, "gap_grows should be True or False"
    ok = gap_grows == (gaps[0] < gaps[1] < gaps[2])
    assert ok, "gap_grows does not match your depth_final"

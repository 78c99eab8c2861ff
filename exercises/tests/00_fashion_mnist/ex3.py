from otter.test_files import test_case

OK_FORMAT = False

name = "ex3"
points = None


@test_case(
    points=None, hidden=False, failure_message="Time the same number of training images through both loaders."
)
def test_ex3(seconds, images_timed):
    ok = isinstance(seconds, dict) and set(seconds) == {"d2l_ext", "book"}
    assert ok, "seconds should be a dict with the keys 'd2l_ext' and 'book'"
    ok = all(isinstance(t, float) and t > 0 for t in seconds.values())
    assert ok, "seconds should hold positive floats, differences of time.perf_counter()"
    ok = isinstance(images_timed, int) and images_timed > 0
    assert ok, "images_timed should be the number of images each pass read (an int)"
    assert seconds["book"] > seconds["d2l_ext"], "look again at which loader took longer"

from otter.test_files import test_case

OK_FORMAT = False

name = "ex2"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Catch what FashionMNIST(root=empty) raises for a folder without the four files.",
)
def test_ex2(error, empty):
    import pathlib

    import d2l_ext

    assert isinstance(empty, pathlib.Path), "empty should be the folder, as a pathlib.Path"
    assert isinstance(error, d2l_ext.DataError), "error should be the exception d2l_ext raised"
    message = str(error)
    ok = str(empty) in message and all(name in message for name in d2l_ext.data.FILES)
    assert ok, "error should be the one raised for the folder in empty, not for another source"

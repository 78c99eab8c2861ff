"""tools/export.py: #@save definitions become d2l_ext modules, and the check catches any drift."""

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("export", ROOT / "tools" / "export.py")
export = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export)

CELLS = [
    ("markdown", "# 07 · Toy topic\nText."),
    ("code", "%matplotlib inline\nimport torch  #@save\nfrom torch import nn  #@save\nimport math"),
    ("code", "class Toy(nn.Module):  #@save\n    def __init__(self, k):\n        super().__init__()\n"
             "        self.k = k\n\n    def forward(self, X):\n        return X * self.k"),
    ("code", "def helper(x):\n    return x\n\n\nSCALE = 3  #@save\ntoy = Toy(2)\ntoy"),
    ("code", "def add_to_class(Class):  # @save\n    def wrapper(obj):\n"
             "        setattr(Class, obj.__name__, obj)\n\n    return wrapper"),
    ("code", "@add_to_class(Toy)  #@save\ndef twice(self, X):\n    return 2 * self(X)"),
]  # fmt: skip


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "d2l_ext").mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    nb = nbformat.v4.new_notebook()
    for kind, src in CELLS:
        nb.cells.append(getattr(nbformat.v4, f"new_{kind}_cell")(src))
    nbformat.write(nb, tmp_path / "notebooks" / "07_toy.ipynb")
    monkeypatch.setattr(export, "ROOT", tmp_path)
    return tmp_path


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exports_saved_definitions_only(repo):
    assert export.main([]) == 0
    module_path = repo / "d2l_ext" / "toy.py"
    text = module_path.read_text()
    assert text.startswith("# Generated from notebooks/07_toy.ipynb by tools/export.py.\n# Do not edit")
    assert "07 · Toy topic" in text and "@save" not in text
    assert "def helper" not in text and "toy = Toy(2)" not in text and "import math" not in text
    assert "%matplotlib" not in text and "SCALE = 3" in text
    toy = load(module_path)
    import torch

    assert toy.Toy(3)(torch.ones(2)).tolist() == [3.0, 3.0]
    assert toy.Toy(3).twice(torch.ones(1)).tolist() == [6.0]  # the add_to_class method came along


def test_check_passes_when_in_sync_and_fails_on_drift(repo, capsys):
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0
    nb_path = repo / "notebooks" / "07_toy.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][2]["source"] = [s.replace("X * self.k", "X * self.k + 1") for s in nb["cells"][2]["source"]]
    nb_path.write_text(json.dumps(nb))
    assert export.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert (
        "not in sync" in err and "d2l_ext/toy.py differs" in err and "+        return X * self.k + 1" in err
    )
    assert "return X * self.k + 1" not in (repo / "d2l_ext" / "toy.py").read_text()  # check writes nothing


def test_missing_module_fails_the_check(repo):
    assert export.main(["--check"]) == 1


def test_refuses_to_overwrite_a_hand_written_module(repo, capsys):
    hand = repo / "d2l_ext" / "toy.py"
    hand.write_text("# my own code\n")
    assert export.main([]) == 1
    assert hand.read_text() == "# my own code\n"
    assert "hand-written" in capsys.readouterr().err


def test_stale_generated_module_is_reported(repo, capsys):
    assert export.main([]) == 0
    (repo / "notebooks" / "07_toy.ipynb").unlink()
    assert export.main(["--check"]) == 1
    assert "no notebook saves into it" in capsys.readouterr().err


def test_unparseable_cell_names_notebook_and_cell(repo):
    nb_path = repo / "notebooks" / "07_toy.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("def broken(:  #@save\n    pass"))
    nbformat.write(nb, nb_path)
    with pytest.raises(SystemExit, match="07_toy.ipynb, code cell 6: cannot parse"):
        export.main([])


def test_the_repository_is_in_sync():
    """The real notebooks and d2l_ext: CI fails here when someone edits one and not the other."""
    proc = __import__("subprocess").run(
        [sys.executable, str(ROOT / "tools" / "export.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr

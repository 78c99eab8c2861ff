"""tools/export.py: #@save definitions become d2l_ext modules, and the check catches any drift."""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from repo_scripts import script

ROOT = Path(__file__).resolve().parent.parent
export = script("tools/export.py")

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

MARKER = re.compile(r"^(?P<indent> *)# (?P<nb>notebooks/\S+\.ipynb), cell (?P<cell>\d+)$")
DEFINES = re.compile(r"^(?:async def|def|class) (?P<name>\w+)|^(?P<var>\w+)\s*[:=]")


def write_notebook(path: Path, cells) -> Path:
    nb = nbformat.v4.new_notebook()
    for kind, src in cells:
        nb.cells.append(getattr(nbformat.v4, f"new_{kind}_cell")(src))
    nbformat.write(nb, path)
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "d2l_ext").mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    write_notebook(tmp_path / "notebooks" / "07_toy.ipynb", CELLS)
    monkeypatch.setattr(export, "ROOT", tmp_path)
    return tmp_path


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markers(text: str) -> list[tuple[str, int, str, str]]:
    """(notebook, cell, indent, name defined next) for each cell comment of a generated module."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if m := MARKER.match(line):
            after = (s[len(m["indent"]) :] for s in lines[i + 1 :] if s.startswith(m["indent"]))
            name = next(d["name"] or d["var"] for s in after if (d := DEFINES.match(s)))
            out.append((m["nb"], int(m["cell"]), m["indent"], name))
    return out


def cell_defines(cell_source: str, name: str) -> bool:
    return any((d := DEFINES.match(s)) and name in (d["name"], d["var"]) for s in cell_source.splitlines())


def test_exports_saved_definitions_only_each_under_its_cell(repo):
    assert export.main([]) == 0
    text = (repo / "d2l_ext" / "toy.py").read_text()
    assert text.startswith("# Generated from notebooks/07_toy.ipynb by tools/export.py.\n# Do not edit")
    assert "07 · Toy topic" in text and "@save" not in text
    assert "def helper" not in text and "toy = Toy(2)" not in text and "import math" not in text
    assert "%matplotlib" not in text and "SCALE = 3" in text
    module = load(repo / "d2l_ext" / "toy.py")
    assert module.Toy(3)(torch.ones(2)).tolist() == [3.0, 3.0]
    assert module.Toy(3).twice(torch.ones(1)).tolist() == [6.0]  # the add_to_class method came along
    assert module.__all__ == ["Toy", "SCALE", "add_to_class"]  # notebook order; imports are not its names
    assert markers(text) == [
        ("notebooks/07_toy.ipynb", 3, "", "Toy"),  # counted from 1 over all cells: the title is cell 1
        ("notebooks/07_toy.ipynb", 6, "    ", "twice"),  # the add_to_class method, inside its class
        ("notebooks/07_toy.ipynb", 4, "", "SCALE"),
        ("notebooks/07_toy.ipynb", 5, "", "add_to_class"),
    ]


EDGES = [
    ("markdown", "# 08 · Edges"),
    ("code", "import torch  #@save\nfrom torch import nn  #@save\nfrom edge_base import Base  #@save\n\n\n"
             "def add_to_class(Class):  #@save\n    def wrapper(obj):\n"
             "        setattr(Class, obj.__name__, obj)\n\n    return wrapper"),
    ("code", "class Net(nn.Module):  #@save\n    def forward(self, X):\n        return X\n\n"
             "    def size(self):\n        return 1"),
    ("code", "@add_to_class(Net)  #@save\ndef __init__(self, k=3):\n    super(Net, self).__init__()\n"
             "    self.k = k"),
    ("code", "@add_to_class(Net)  #@save\ndef forward(self, X):\n    return -X"),
    ("code", "@add_to_class(Net)  #@save\n@torch.no_grad()\ndef grad_free(self, X):\n"
             "    return (X * 2).requires_grad"),
    ("code", '@add_to_class(Net)  #@save\ndef banner(self):\n    return """a\n  b"""'),
    ("code", "@add_to_class(Net)  #@save\ndef secret(self):\n    self.__hidden = 1\n"
             '    return vars(self).get("__hidden")'),
    ("code", '@add_to_class(Base)  #@save\ndef everywhere(self):\n    return "base"'),
    ("code", "def check(\n    a: int,\n    b: int,\n) -> int:  # @save\n    return a + b"),
]  # fmt: skip


def test_add_to_class_moves_only_where_the_meaning_stays(repo, monkeypatch):
    """Overrides, other decorators and multi-line strings survive the move into the class, and the
    book's ``super(C, self)`` becomes ``super()``; a ``__private`` name (mangled in a class body) and
    a class from elsewhere stay outside. A mark on a wrapped signature's last line counts."""
    (repo / "edge_base.py").write_text("class Base:\n    pass\n")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.delitem(sys.modules, "edge_base", raising=False)
    nb = write_notebook(repo / "notebooks" / "08_edges.ipynb", EDGES)
    assert export.main([]) == 0
    path = repo / "d2l_ext" / "edges.py"
    text = path.read_text()
    assert "super().__init__()" in text and "super(Net" not in text
    tree = ast.parse(text)
    net = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert [n.name for n in net.body] == ["forward", "size", "__init__", "forward", "grad_free", "banner"]
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"add_to_class", "secret", "everywhere", "check"}
    edges = load(path)
    assert {"forward", "grad_free", "banner"}.isdisjoint(vars(edges))  # no `forward = None` left outside
    assert edges.__all__ == ["add_to_class", "Net", "check"]  # `secret` and `everywhere` are None there
    assert edges.check(2, 3) == 5 and edges.Net.banner.__qualname__ == "Net.banner"  # a plain method

    notebook = {}  # the notebook's own cells, run as a reader runs them
    for cell in nbformat.read(nb, as_version=4).cells[1:]:
        exec(cell.source, notebook)
    X = torch.ones(2, requires_grad=True)
    for Net in (notebook["Net"], edges.Net):
        assert Net().forward(X).tolist() == [-1.0, -1.0]  # the later definition wins, as with setattr
        assert Net().grad_free(X) is False and Net().banner() == "a\n  b"
        assert Net().secret() == 1  # in a class body, self.__hidden would be self._Net__hidden
        assert Net().size() == 1 and Net(4).k == 4
    methods = {k for k, v in vars(notebook["Net"]).items() if callable(v)}
    assert methods == {k for k, v in vars(edges.Net).items() if callable(v)}
    assert edges.Base().everywhere() == "base"


def test_check_names_drift_and_stale_modules_and_no_hand_written_module_is_overwritten(repo, capsys):
    assert export.main(["--check"]) == 1  # the module is missing
    assert export.main([]) == 0 and export.main(["--check"]) == 0
    nb_path, module = repo / "notebooks" / "07_toy.ipynb", repo / "d2l_ext" / "toy.py"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("X * self.k", "X * self.k + 1")
    nbformat.write(nb, nb_path)
    assert export.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert (
        "not in sync" in err and "d2l_ext/toy.py differs" in err and "+        return X * self.k + 1" in err
    )
    assert "return X * self.k + 1" not in module.read_text()  # check writes nothing
    (repo / "d2l_ext" / "old.py").write_text(export.HEADER.format(nb="notebooks/06_old.ipynb") + "\n")
    module.write_text("# my own code\n")
    assert export.main([]) == 1 and module.read_text() == "# my own code\n"
    err = capsys.readouterr().err
    assert "toy.py is hand-written" in err and "old.py is generated but no notebook saves into it" in err


def test_unparseable_cell_names_notebook_and_cell(repo):
    nb_path = repo / "notebooks" / "07_toy.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("def broken(:  #@save\n    pass"))
    nbformat.write(nb, nb_path)
    with pytest.raises(SystemExit, match=r"07_toy.ipynb, cell 7 \(counted from 1, markdown included\)"):
        export.main([])


SAVING = [nb for nb in sorted((ROOT / "notebooks").glob("*.ipynb")) if export.saved_chunks(nb)]


@pytest.mark.parametrize("nb", SAVING, ids=lambda p: p.name)
def test_every_cell_comment_points_to_its_definition(nb):
    """What every real notebook generates: each cell comment names the cell that defines what follows
    it, and ``__all__`` lists the public top-level definitions in notebook order."""
    text = export.generate(nb)
    cells = nbformat.read(nb, as_version=4).cells
    found = markers(text)
    assert found, f"{nb.name}: no cell comments in the generated module"
    for path, cell, _, name in found:
        assert path == f"notebooks/{nb.name}"
        assert cell_defines(cells[cell - 1].source, name), f"{nb.name}: cell {cell} does not define {name}"
    module = {}
    exec(text, module)
    top = [name for _, _, indent, name in found if not indent and not name.startswith("_")]
    assert module["__all__"] == [n for n in dict.fromkeys(top) if module[n] is not None]  # add_to_class: None


def test_the_repository_is_in_sync(capsys):
    """The real notebooks and d2l_ext: CI fails here when someone edits one and not the other."""
    assert export.main(["--check"]) == 0, capsys.readouterr().err

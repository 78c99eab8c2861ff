"""A sixth notebook needs three things: the notebook, its line in site/_toc.yml and its recipe in
d2l_ext/presets.py (issue #22). Shown on a copy of the repository with a scratch notebook: the
generators and checks pass, the tests that go over every notebook pass, and the notebook runs in
the ci preset, fit and floor included. No committed record (benchmarks/results/) gets an entry:
the site shows a notebook the records lack as not measured yet."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NAME = "05_scratch"

CELLS = [
    ("markdown", "# 05 · Scratch: a sixth notebook\n\nA tiny classifier, trained once under its recipe."),
    (
        "code",
        "import torch  # @save\nfrom d2l import torch as d2l  # @save\nfrom torch import nn  # @save\n\n"
        "import d2l_ext\nfrom d2l_ext import FashionMNIST, experiment, fit\n\n"
        "d2l_ext.set_seed(0)\n"
        'print("preset:", d2l_ext.current_preset(), "| torch", torch.__version__)',
    ),
    ("markdown", "## A tiny model, trained"),
    (
        "code",
        "class Scratch(d2l.Classifier):  # @save\n"
        '    """Flatten, one hidden layer, ten classes."""\n\n'
        "    def __init__(self, num_hiddens: int = 32, lr: float = 0.1):\n"
        "        super().__init__()\n"
        "        self.save_hyperparameters()\n"
        "        self.net = nn.Sequential(\n"
        "            nn.Flatten(), nn.Linear(28 * 28, num_hiddens), nn.ReLU(), nn.Linear(num_hiddens, 10)\n"
        "        )",
    ),
    (
        "code",
        'cfg = experiment("scratch")\ndata = FashionMNIST(**cfg.data)\nmodel = Scratch(**cfg.model)\n'
        "trainer = fit(cfg, model, data)\nprint(trainer.summary())\n"
        'val_acc = trainer.history[-1]["val_acc"]',
    ),
    (
        "code",
        'assert val_acc >= cfg.floor, f"validation accuracy {val_acc:.3f} is below the floor {cfg.floor}"',
    ),
    ("markdown", "## Exercises\n\n1. (easy) Double `num_hiddens`. What changes?"),
    ("markdown", "## References\n\n- Zhang, Lipton, Li and Smola. *Dive into Deep Learning*, section 4.2."),
]

RECIPE = """\
    # ---- 05_scratch ----------------------------------------------------------------------
    Recipe(
        "scratch",
        models=("d2l_ext.scratch.Scratch",),
        ci=Experiment(
            dict(_BOOK_DATA, **_CI_DATA),
            _LR,
            dict(max_epochs=1, max_steps=30),
            seconds=3,
            floor=0.5,
            about=_WHY_CI,
        ),
        demo=Experiment(_BOOK_DATA, _LR, dict(max_epochs=1), seconds=10, floor=0.5, about="one epoch"),
        full=Experiment(_BOOK_DATA, _LR, dict(max_epochs=10), seconds=60, floor=0.5, about="ten epochs"),
    ),
"""


def add_sixth_notebook(repo: Path) -> Path:
    """The three things a sixth notebook needs, in the repository at ``repo``: the notebook, its line
    of site/_toc.yml and its recipe. Returns the notebook."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [getattr(nbformat.v4, f"new_{kind}_cell")(src) for kind, src in CELLS]
    path = repo / "notebooks" / f"{NAME}.ipynb"
    nbformat.write(nb, path)
    toc = repo / "site" / "_toc.yml"
    last = sorted((repo / "notebooks").glob("*.ipynb"))[-2].stem  # the notebook before this one
    line = f"  - file: notebooks/{last}\n"
    assert toc.read_text().count(line) == 1
    toc.write_text(toc.read_text().replace(line, f"{line}  - file: notebooks/{NAME}\n"))
    presets = repo / "d2l_ext" / "presets.py"
    end = "\n)\n\nEXPERIMENTS: dict"
    assert presets.read_text().count(end) == 1
    presets.write_text(presets.read_text().replace(end, f"\n{RECIPE.rstrip()}{end}"))
    return path


def copy_of_the_repository(dest: Path) -> Path:
    """The repository's files as a commit would hold them (tracked, and new files git does not
    ignore; no .venv, no build/), with the working tree's contents."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    for rel in dict.fromkeys(filter(None, listed.split("\0"))):
        if (ROOT / rel).is_file():  # a file deleted but not yet staged is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / ".venv").symlink_to(sys.prefix)  # the pre-commit hooks' tools, which tests/test_repo.py checks
    return dest


# The tests that go over every notebook, every recipe, the table of contents and the committed
# records; the scratch repository of test_pre_commit_fixes_and_blocks_a_bad_commit has no notebook of
# ours, and it takes longer than the rest together.
OVER_EVERY_NOTEBOOK = [
    "test_repo.py",
    "test_export.py",
    "test_slides.py",
    "test_sections.py",
    "test_presets.py",
]


def test_a_sixth_notebook_needs_the_notebook_a_toc_line_and_a_recipe(tmp_path, monkeypatch):
    repo = copy_of_the_repository(tmp_path / "repo")
    notebook = add_sixth_notebook(repo)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "D2L_EXT_PRESET": "ci",
        "D2L_EXT_RUNS": str(tmp_path / "runs"),  # an empty run cache: the notebook trains
    }

    def run(*args: str) -> str:
        out = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    found = run(
        sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('d2l_ext').origin)"
    )
    assert Path(found.strip()) == repo / "d2l_ext" / "__init__.py"  # the copy's package, not the checkout's
    # What the author runs once (make export, make format): the module and the slide metadata.
    assert "wrote d2l_ext/scratch.py" in run(sys.executable, "tools/export.py")
    assert f"{notebook.relative_to(repo)}: slide metadata written" in run(sys.executable, "tools/slides.py")
    # make check, with no solutions notebook for it: the exercises are optional.
    run(sys.executable, "tools/export.py", "--check")
    run(sys.executable, "tools/slides.py", "--check")
    run(sys.executable, "tools/exercises.py", "--check")
    run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pytest'}",
        "-k", "not test_pre_commit_fixes_and_blocks_a_bad_commit",
        *(f"tests/{name}" for name in OVER_EVERY_NOTEBOOK),
    )  # fmt: skip
    # The notebook itself, top to bottom in the ci preset: its training and the floor's assert.
    for name in ("PYTHONPATH", "D2L_EXT_PRESET", "D2L_EXT_RUNS"):
        monkeypatch.setenv(name, env[name])  # the kernel's environment
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    printed = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert "preset: ci" in printed[0]
    assert any("validation loss" in text for text in printed)  # trained: the summary's line
    # The committed records know nothing of it: the site's tables show it as not measured yet, which
    # tests/test_repo.py checked above.
    assert not any(NAME in p.read_text() for p in (repo / "benchmarks" / "results").glob("*.json"))

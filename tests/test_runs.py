"""The run cache (d2l_ext/runs.py): a replay is the run it stored, a changed model or setting never
replays a stale run, and a bad entry is reported and retrained, never loaded."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import linecache
import resource
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from d2l import torch as d2l
from repo_scripts import script
from torch import nn

import d2l_ext
import d2l_ext.runs
from d2l_ext import FashionMNIST, StepLosses, experiment, fit
from d2l_ext.measure import ActivationRecorder
from d2l_ext.runs import RunCache, RunCacheWarning, code_digest, measure_once, run_key, source_digest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty run cache of the test's own; replays allowed (the suite's retrain setting is off)."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("D2L_EXT_RUNS", str(folder))
    monkeypatch.delenv("D2L_EXT_RETRAIN", raising=False)
    return folder


@pytest.fixture(scope="module")
def data():
    return FashionMNIST(batch_size=64, train_subset=640, val_subset=200, verbose=False)


CFG = experiment("bn_lenet", "ci", verbose=False)
SHORT = dict(max_steps=6, plot=False)  # six steps: a run in well under a second


class Tiny(d2l.Classifier):
    def __init__(self, lr=0.1, width=4):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(width, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
        )


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pt"))


def train(data, model=None, **settings):
    d2l_ext.set_seed(0)
    model = Tiny() if model is None else model
    losses = StepLosses()
    trainer = fit(CFG, model, data, callbacks=[losses], **(SHORT | settings))
    after = torch.rand(3)  # where the global generator stands after the run
    batch = next(iter(data.train_dataloader()))[1][:8]  # and the loader's own generator
    return model, trainer, losses, after, batch


def test_a_replay_is_the_run_it_stored(runs, data, capsys):
    m1, t1, l1, after1, batch1 = train(data)
    assert "Replayed" not in capsys.readouterr().out and len(entries(runs)) == 1
    m2, t2, l2, after2, batch2 = train(data)
    out = capsys.readouterr().out
    assert "Replayed from the run cache: 'bn_lenet' (ci preset)" in out
    assert "retrain=True" in out and "D2L_EXT_RETRAIN=1" in out
    state1, state2 = m1.state_dict(), m2.state_dict()
    assert state1.keys() == state2.keys() and all(torch.equal(state1[k], state2[k]) for k in state1)
    assert t2.history == t1.history and t2.summary() == t1.summary()
    assert l2.losses == l1.losses and len(l1.losses) == 6
    assert torch.equal(after2, after1) and torch.equal(batch2, batch1)  # what follows sees the same
    X = next(iter(data.val_dataloader()))[0]
    with torch.no_grad():
        assert torch.equal(m1.eval()(X), m2.eval()(X))


def test_the_stored_record_says_what_the_run_was(runs, data):
    train(data)
    (record,) = runs.rglob("*.json")
    meta = json.loads(record.read_text())
    assert record.parent == runs / "bn_lenet" / "ci"
    assert meta["about"]["experiment"] == "bn_lenet" and meta["about"]["preset"] == "ci"
    assert meta["about"]["trainer"]["max_steps"] == 6 and "plot" not in meta["about"]["trainer"]
    assert (
        meta["versions"]["torch"] == torch.__version__
        and meta["versions"]["d2l_ext"] == d2l_ext.runs._LIBRARY["d2l_ext"][:12]
    )
    assert meta["train_seconds"] > 0 and meta["wall_seconds"] >= meta["train_seconds"]
    assert meta["machine"] and meta["date"][:2] == "20"


def test_a_setting_that_changes_the_run_misses_and_one_that_does_not_hits(runs, data, capsys):
    train(data)
    train(data, max_steps=7)  # another run
    train(data, model=Tiny(width=5))  # another model
    train(data, model=Tiny(lr=0.05))  # another hyperparameter
    assert "Replayed" not in capsys.readouterr().out and len(entries(runs)) == 4
    train(data, plot=True)  # drawing does not change the run
    assert "Replayed" in capsys.readouterr().out and len(entries(runs)) == 4
    other = FashionMNIST(batch_size=64, train_subset=320, val_subset=200, verbose=False)
    train(other)  # other data
    assert "Replayed" not in capsys.readouterr().out and len(entries(runs)) == 5


def test_a_submodule_setting_that_repr_does_not_show_changes_the_key(data):
    from d2l_ext.batch_norm_tools import GhostBatchNorm

    keys = set()
    for size, frozen in ((2, False), (4, False), (4, True)):
        model = Tiny()
        model(torch.zeros(2, 1, 28, 28))
        model.net[1] = GhostBatchNorm(model.net[1], size)
        model.net[1].train(not frozen)  # a frozen BN layer trains differently
        keys.add(run_key(CFG, model, data, dict(CFG.trainer))[0])
    assert len(keys) == 3


MODEL_V1 = """
    from d2l import torch as d2l
    from torch import nn


    def act():
        return nn.ReLU()


    class Edited(d2l.Classifier):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.LazyConv2d(4, 3), act(), nn.Flatten(), nn.LazyLinear(10))

        def forward(self, X):
            return self.net(X)
"""


def load(tmp_path: Path, source: str, version: str):
    """Import ``source`` as the module ``edited_model``, from a folder per version (no stale bytecode)."""
    folder = tmp_path / version
    folder.mkdir()
    (folder / "edited_model.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop("edited_model", None)
        return importlib.import_module("edited_model")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("edited_model", None)


@pytest.mark.parametrize(
    "edit",
    [
        ("return self.net(X)", "return self.net(X) * 2"),  # the forward pass
        ("return nn.ReLU()", "return nn.Tanh()"),  # a function the model's code calls
    ],
    ids=["forward", "called-function"],
)
def test_an_edited_model_misses_the_cache(runs, data, tmp_path, capsys, edit):
    v1 = load(tmp_path, MODEL_V1, "v1")
    train(data, model=v1.Edited())
    train(data, model=v1.Edited())
    assert "Replayed" in capsys.readouterr().out
    v2 = load(tmp_path, MODEL_V1.replace(*edit), "v2")
    train(data, model=v2.Edited())
    assert "Replayed" not in capsys.readouterr().out and len(entries(runs)) == 2


def key_of(model) -> str:
    """The key of a run of ``model`` (the data: a few blank images, enough for a key)."""
    return run_key(CFG, model, Toy(torch.zeros(8, 1, 28, 28), torch.zeros(8)), dict(CFG.trainer))[0]


def test_code_between_definitions_does_not_count_and_a_comment_inside_one_does(tmp_path):
    v1 = load(tmp_path, MODEL_V1, "v1")
    v2 = load(tmp_path, "# a comment\n\nUNUSED = 1\n" + textwrap.dedent(MODEL_V1), "v2")  # a moved cell
    assert key_of(v2.Edited()) == key_of(v1.Edited())
    v3 = load(tmp_path, MODEL_V1.replace("return self.net(X)", "return self.net(X)  # why"), "v3")
    assert key_of(v3.Edited()) != key_of(v1.Edited())  # its source counts, comments too


@pytest.mark.parametrize(
    "edit",
    [
        dict(scale=2),  # a plain global that forward reads
        dict(forward="self.net(X) * SCALE + 1"),  # the forward pass
    ],
    ids=["global", "forward"],
)
def test_code_without_source_counts_by_its_bytecode(edit):
    def made(scale=1, forward="self.net(X) * SCALE"):
        ns = {"__name__": "made_by_exec"}  # exec: no file, no linecache entry, no source
        exec(textwrap.dedent(GLOBAL_MODEL).format(scale=scale).replace("self.net(X) * SCALE", forward), ns)
        return ns["Global"]()

    assert key_of(made()) == key_of(made())  # the same code made twice: the same run
    assert key_of(made(**edit)) != key_of(made())


def test_the_library_counts_by_the_bytes_of_its_files(tmp_path, monkeypatch):
    package = tmp_path / "d2l_ext"  # a copy: the real files are never touched
    shutil.copytree(Path(d2l_ext.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(package)
    (package / ".#runs.py").write_text("an editor's lock file")  # no module: does not count
    assert source_digest(package) == before
    with open(package / "training.py", "a") as f:
        f.write("# a comment\n")  # a comment is a change too: simpler than telling it apart
    assert source_digest(package) != before
    model = Tiny()
    key = key_of(model)
    monkeypatch.setitem(d2l_ext.runs._LIBRARY, "d2l_ext", source_digest(package))
    assert key_of(model) != key


def cell(ns: dict, source: str, name: str) -> None:
    """Run ``source`` in ``ns`` as IPython runs a cell: registered in linecache under its own name."""
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    exec(compile(source, name, "exec"), ns)


def notebook_namespace(notebook: str, names: list[str]) -> dict:
    """Run the code cells of ``notebook`` that define ``names`` as IPython runs them, in ``__main__``."""
    cells = json.loads((REPO / "notebooks" / notebook).read_text())["cells"]
    ns: dict = {"__name__": "__main__"}
    exec("import torch\nfrom torch import nn\nfrom torch.nn import functional as F\nimport operator", ns)
    exec("from d2l import torch as d2l", ns)
    for i, c in enumerate(cells):
        source = "".join(c["source"])
        defines = any(f"class {n}(" in source or f"def {n}(" in source for n in names)
        attaches = any(f"add_to_class({n})" in source for n in names)
        if c["cell_type"] == "code" and (defines or attaches):
            cell(ns, source, f"<cell-{i}>")
    return ns


def test_a_class_defined_in_its_notebook_and_its_exported_copy_share_their_runs():
    # 04 replays the ResNet run that 02 trained, and a section run alone after a restart, with the
    # classes imported from d2l_ext, replays the notebook's: both must give the key that the classes
    # defined in 02's cells (spread over cells by add_to_class, super(ResNet, self)) give.
    from d2l_ext import resnet

    ns = notebook_namespace("02_resnet.ipynb", ["check_count", "Residual", "ResNet", "check_arch"])
    assert ns["ResNet"] is not resnet.ResNet and ns["ResNet"].__module__ == "__main__"
    cfg = experiment("resnet", "ci", verbose=False)
    data = FashionMNIST(**cfg.data, verbose=False)
    key_library, _ = run_key(cfg, resnet.ResNet(**cfg.model), data, cfg.trainer)
    assert run_key(cfg, ns["ResNet"](**cfg.model), data, cfg.trainer)[0] == key_library
    assert code_digest(ns["Residual"]) == code_digest(resnet.Residual) == code_digest()
    # A cell edited in the lecture is no copy: a function that the class reads ...
    cell(ns, "def check_arch(arch):\n    return tuple(map(tuple, arch))\n", "<edited-1>")
    edited = run_key(cfg, ns["ResNet"](**cfg.model), data, cfg.trainer)[0]
    assert edited != key_library
    # ... or a method that add_to_class puts into a submodule's class
    cell(ns, "@d2l.add_to_class(Residual)\ndef forward(self, X):\n    return X\n", "<edited-2>")
    assert run_key(cfg, ns["ResNet"](**cfg.model), data, cfg.trainer)[0] not in (edited, key_library)


def test_a_notebook_function_put_into_a_library_class_counts(monkeypatch):
    from d2l_ext.resnet import Residual

    key = key_of(nn.Sequential(Residual(4)))
    monkeypatch.setattr(Residual, "forward", lambda self, X: X)  # as @d2l.add_to_class(Residual) does
    assert key_of(nn.Sequential(Residual(4))) != key
    monkeypatch.undo()
    assert key_of(nn.Sequential(Residual(4))) == key


def test_a_recorder_is_stored_and_restored(runs, data):
    curves = []
    for _ in range(2):
        d2l_ext.set_seed(0)
        model = Tiny()
        model(torch.zeros(2, 1, 28, 28))
        with ActivationRecorder({"conv": model.net[0]}) as recorder:
            fit(CFG, model, data, records=[recorder], **SHORT)
        curves.append(recorder.curves()["conv"])
    assert len(entries(runs)) == 1
    assert curves[0][0].shape == (6, 4) and all(torch.equal(a, b) for a, b in zip(*curves, strict=True))


def corrupt(pt: Path) -> None:
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pt.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (corrupt, "corrupt"),
        (lambda pt: pt.write_bytes(pt.read_bytes()[:100]), "corrupt"),  # cut short
        (lambda pt: pt.with_suffix(".json").unlink(), "partial"),
        (lambda pt: pt.with_suffix(".json").write_text("{not json"), "unreadable"),
    ],
    ids=["flipped-byte", "truncated", "no-record", "bad-record"],
)
def test_a_bad_entry_is_reported_retrained_and_replaced(runs, data, capsys, damage, message):
    m1, t1, *_ = train(data)
    (pt,) = entries(runs)
    damage(pt)
    with pytest.warns(RunCacheWarning, match=message):
        m2, t2, *_ = train(data)
    assert "Replayed" not in capsys.readouterr().out
    assert t2.history[-1]["steps"] == t1.history[-1]["steps"]  # it trained again
    assert RunCache(runs).load(CFG, pt.stem) is not None  # and the entry is whole again
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunCacheWarning)
        train(data)
    assert "Replayed" in capsys.readouterr().out


def rewrite(pt: Path, edit_run=None, edit_record=None) -> None:
    """Change an entry's body or record, with a matching checksum: whole, but wrong inside."""
    if edit_run is not None:
        run = torch.load(pt, weights_only=True)
        torch.save(edit_run(run), pt)
    record = json.loads(pt.with_suffix(".json").read_text())
    record["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    pt.with_suffix(".json").write_text(json.dumps(edit_record(record) if edit_record else record))


def other_weights(run):
    wider = Tiny(width=5)
    wider(torch.zeros(2, 1, 28, 28))  # built: weights of the same names, other shapes
    run["state"] = wider.state_dict()
    return run


@pytest.mark.parametrize(
    "edit_run, edit_record",
    [
        (other_weights, None),
        (lambda run: {k: v for k, v in run.items() if k != "rng"}, None),
        (None, lambda record: {k: v for k, v in record.items() if k != "date"}),
        (None, lambda record: [record]),
    ],
    ids=["weights-of-another-shape", "no-rng", "record-without-date", "record-is-a-list"],
)
def test_a_whole_entry_with_a_bad_body_is_reported_and_retrained(runs, data, capsys, edit_run, edit_record):
    fresh, *_ = train(data)
    (pt,) = entries(runs)
    rewrite(pt, edit_run, edit_record)
    with pytest.warns(RunCacheWarning, match="not usable|unreadable|corrupt"):
        model, trainer, *_ = train(data)
    assert "Replayed" not in capsys.readouterr().out and trainer.history[-1]["steps"] == 6
    assert same_state(model, fresh)  # trained as a fresh run would, from the same start
    train(data)
    assert "Replayed" in capsys.readouterr().out  # the entry is whole again


def test_a_store_that_fails_keeps_the_trained_model(runs, data):
    # A file-size limit: torch.save raises RuntimeError, not OSError (Python ignores SIGXFSZ).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, hard))
    try:
        with pytest.warns(RunCacheWarning, match="could not be stored"):
            model, trainer, *_ = train(data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert trainer.history[-1]["steps"] == 6 and not list(runs.rglob("*.json"))
    again, *_ = train(data)  # it trains again, and is stored this time
    assert same_state(again, model) and len(entries(runs)) == 1


def test_the_cache_stays_in_its_folder(runs, data, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runs / "bn_lenet").mkdir(parents=True)
    (runs / "bn_lenet" / "ci").symlink_to(elsewhere)  # a planted link
    with pytest.warns(RunCacheWarning, match="outside"):
        train(data)
    assert not list(elsewhere.iterdir())
    with pytest.raises(ValueError, match="plain name"):
        measure_once(lambda m, loader: 0, Tiny(), data.train_dataloader(), name="../escape")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("D2L_EXT_RUNS", "false")  # off, like D2L_EXT_RETRAIN=false
    train(data)
    train(data)
    assert "Replayed" not in capsys.readouterr().out and not (tmp_path / "false").exists()


def test_retrain_by_argument_or_environment(runs, data, capsys, monkeypatch):
    train(data)
    train(data, retrain=True)
    assert "Replayed" not in capsys.readouterr().out
    monkeypatch.setenv("D2L_EXT_RETRAIN", "1")
    train(data)
    assert "Replayed" not in capsys.readouterr().out
    monkeypatch.setenv("D2L_EXT_RETRAIN", "maybe")
    with pytest.raises(ValueError, match="D2L_EXT_RETRAIN"):
        train(data)


def test_the_cache_can_be_turned_off(runs, data, monkeypatch, capsys):
    monkeypatch.setenv("D2L_EXT_RUNS", "off")
    train(data)
    train(data)
    assert "Replayed" not in capsys.readouterr().out and not runs.exists()


def test_an_unwritable_cache_warns_and_keeps_the_trained_model(tmp_path, data, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("D2L_EXT_RUNS", str(blocker / "runs"))
    monkeypatch.delenv("D2L_EXT_RETRAIN", raising=False)
    with pytest.warns(RunCacheWarning, match="could not be stored"):
        _, trainer, *_ = train(data)
    assert trainer.history[-1]["steps"] == 6


class StopAt(d2l_ext.Callback):
    """Ctrl-C at a given step, as an instructor interrupts a training."""

    def __init__(self, step: int):
        self.step = step

    def after_batch(self, trainer):
        if trainer.train_batch_idx == self.step:
            raise KeyboardInterrupt


def test_a_continued_or_interrupted_training_is_stored_apart_from_the_fresh_run(runs, data, capsys, tmp_path):
    fresh, *_ = train(data)
    fit(CFG, fresh, data, **SHORT)  # d2l: fitting again continues from the trained weights ...
    assert len(entries(runs)) == 2  # ... a run of its own, since it starts from other weights
    interrupted = Tiny()
    with pytest.raises(KeyboardInterrupt):
        d2l_ext.set_seed(0)
        fit(CFG, interrupted, data, callbacks=[StopAt(3)], **SHORT)
    train(data, model=interrupted)  # the same cell run again on the half-trained model
    assert len(entries(runs)) == 3 and "Replayed" not in capsys.readouterr().out
    model, *_ = train(data)  # a new model replays the fresh run, not a continued one
    assert "Replayed" in capsys.readouterr().out
    reference = tmp_path / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("D2L_EXT_RUNS", str(reference))
        trained, *_ = train(data)
    assert same_state(model, trained) and not same_state(model, interrupted)


def test_retrain_on_a_replayed_model_says_to_make_it_anew(runs, data, capsys):
    train(data)
    model, *_ = train(data)
    assert "make the model anew and fit(..., retrain=True)" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"continue from them.*make the model anew"):
        fit(CFG, model, data, retrain=True, **SHORT)


class Toy(d2l.DataModule):
    """A course's own data module: real Fashion-MNIST images, held as tensors of its own."""

    def __init__(self, X, y, batch_size=64):
        super().__init__()
        self.save_hyperparameters()

    def get_dataloader(self, train):
        return self.get_tensorloader((self.X, self.y), train)


class Scaled(d2l_ext.Callback):
    """A callback that changes the run: the loss times ``factor``."""

    def __init__(self, factor: float):
        self.factor = factor

    def after_loss(self, trainer):
        trainer.loss = trainer.loss * self.factor


GLOBAL_MODEL = """
    from d2l import torch as d2l
    from torch import nn

    SCALE = {scale}


    class Global(d2l.Classifier):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))

        def forward(self, X):
            return self.net(X) * SCALE
"""


def test_what_changes_a_run_misses_the_cache(runs, data, tmp_path, capsys):
    images, labels = data.train.images[:256].float() / 255, data.train.targets[:256]
    for X in (images[:, None], images.flip(-1)[:, None]):  # the same class, other tensors
        fit(CFG, Tiny(), Toy(X, labels), **SHORT)
    X[:8] = 0  # the same tensor, changed in place
    fit(CFG, Tiny(), Toy(X, labels), **SHORT)
    for factor in (1.0, 2.0):  # another setting of an extra callback
        fit(CFG, Tiny(), data, callbacks=[Scaled(factor)], **SHORT)
    for scale in (1, 2):  # a notebook global that forward reads
        module = load(tmp_path, GLOBAL_MODEL.format(scale=scale), f"scale{scale}")
        fit(CFG, module.Global(), data, **SHORT)
    assert "Replayed" not in capsys.readouterr().out and len(entries(runs)) == 7


def test_fit_takes_the_experiment_first(data):
    with pytest.raises(TypeError, match="experiment"):
        fit(Tiny(), data, CFG)


def test_make_warm_stores_the_runs_a_notebook_asks_for(runs, tmp_path, capsys, monkeypatch):
    import nbformat

    warm = script("tools/warm.py")
    notebook = tmp_path / "01_toy.ipynb"
    code = """
        from d2l_ext import FashionMNIST, experiment, fit
        from d2l_ext.batch_norm import BNLeNet

        cfg = experiment("bn_lenet", verbose=False)
        data = FashionMNIST(batch_size=64, train_subset=320, val_subset=100, verbose=False)
        fit(cfg, BNLeNet(**cfg.model), data, max_steps=3, plot=False).summary()
    """
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(code))]), notebook
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("D2L_EXT_PRESET", "ci")  # warm sets it for its kernels; restored after the test
    assert warm.main([str(notebook), "--preset", "ci"]) == 0
    assert "replayed (runs, measurements): 0" in capsys.readouterr().out and len(entries(runs)) == 1
    record = tmp_path / "record" / "warm.json"
    assert warm.main([str(notebook), "--preset", "ci", "--record", str(record)]) == 0
    assert "replayed (runs, measurements): 1" in capsys.readouterr().out and len(entries(runs)) == 1
    written = json.loads(record.read_text())
    assert written["preset"] == "ci" and written["notebooks"]["01_toy.ipynb"]["replayed"] == 1
    assert 0 < written["notebooks"]["01_toy.ipynb"]["seconds"] and "cores" in written["machine"]
    assert nbformat.read(notebook, as_version=4).cells[0].get("outputs") == []  # nothing written back


def test_warm_sections_names_a_section_that_leans_on_an_earlier_one(runs, tmp_path, capsys):
    import nbformat

    warm = script("tools/warm.py")
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [md("# 99 · Toy"), code("x = 1"), md("## One"), code("y = x + 1"), md("## Two"), code("y * 2")]
    cells += [md("## Summary"), code("x, y")]  # a closing section may read every section's names
    notebook = tmp_path / "99_toy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    assert warm.main([str(notebook), "--sections", "--timeout", "60"]) == 1
    out, err = capsys.readouterr()
    assert "One" in out and "99_toy.ipynb, section '## Two': it fails in a fresh kernel" in err
    assert "NameError" in err and "Summary" not in out + err


# -- a measurement of a trained model (exact BN statistics), stored and replayed ------------------


def exact_pass(model, loader, at, **kwargs):
    """`exact_bn_statistics` on a copy of ``model``, with ``loader``'s batches in the order ``at``
    (a generator state); the statistics, the copy, and the loader's state afterwards."""
    from d2l_ext.batch_norm_tools import exact_bn_statistics

    net = copy.deepcopy(model)
    loader.generator.set_state(at)
    stats = exact_bn_statistics(net, loader, **kwargs)
    return stats, net, loader.generator.get_state()


@pytest.fixture
def trained(runs, data):
    model, *_ = train(data)  # BN's running estimates after six steps: far from the exact ones
    loader = data.train_dataloader()
    return model.net, loader, loader.generator.get_state()  # its layers, as notebook 01 measures


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_exact_statistics_replay_what_they_computed(runs, trained, capsys):
    model, loader, at = trained
    stats1, net1, after1 = exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out
    assert len(list((runs / "measurements" / "exact_bn_statistics").glob("*.pt"))) == 1
    assert not same_state(net1, model)  # the pass replaced the running estimates
    stats2, net2, after2 = exact_pass(model, loader, at)
    out = capsys.readouterr().out
    assert "Replayed from the run cache: exact_bn_statistics of this model over 640 images" in out
    assert "recompute=True" in out and "D2L_EXT_RETRAIN=1" in out
    assert len(stats2) == len(stats1) == 1 and all(
        torch.equal(a, b) for s1, s2 in zip(stats1, stats2) for a, b in zip(s1, s2)
    )
    assert same_state(net2, net1) and torch.equal(after2, after1)  # what follows cannot tell


def test_exact_statistics_of_other_weights_data_or_order_are_computed(runs, trained, data, capsys):
    model, loader, at = trained
    exact_pass(model, loader, at)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 1e-6  # one weight, barely
    exact_pass(changed, loader, at)
    exact_pass(model, loader, loader.generator.get_state())  # another order of the batches
    other = FashionMNIST(batch_size=64, train_subset=320, val_subset=200, verbose=False)
    other_loader = other.train_dataloader()
    exact_pass(model, other_loader, other_loader.generator.get_state())  # other images
    assert "Replayed" not in capsys.readouterr().out
    assert len(list((runs / "measurements").rglob("*.pt"))) == 4


def test_exact_statistics_recompute_by_argument_or_environment(runs, trained, capsys, monkeypatch):
    model, loader, at = trained
    exact_pass(model, loader, at)
    exact_pass(model, loader, at, recompute=True)
    monkeypatch.setenv("D2L_EXT_RETRAIN", "1")
    exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out


def test_a_bad_measurement_entry_is_reported_and_computed_again(runs, trained, capsys):
    model, loader, at = trained
    stats1, net1, _ = exact_pass(model, loader, at)
    (pt,) = (runs / "measurements").rglob("*.pt")
    corrupt(pt)
    with pytest.warns(RunCacheWarning, match="corrupt"):
        stats2, net2, _ = exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out and same_state(net2, net1)
    exact_pass(model, loader, at)
    assert "Replayed" in capsys.readouterr().out  # the entry is whole again


def test_measurements_on_other_loaders_or_without_a_cache_are_not_stored(runs, trained, monkeypatch, capsys):
    from d2l_ext.batch_norm_tools import exact_bn_statistics

    model, loader, _ = trained
    batches = [next(iter(loader))] * 2  # a plain list: its contents could change unseen
    for _ in range(2):
        exact_bn_statistics(copy.deepcopy(model), batches)
    monkeypatch.setenv("D2L_EXT_RUNS", "off")
    for _ in range(2):
        exact_pass(model, loader, loader.generator.get_state())
    assert "Replayed" not in capsys.readouterr().out and not (runs / "measurements").exists()

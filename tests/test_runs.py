"""The run cache (d2l_ext/runs.py): a replay is the run it stored, a changed model or setting never
replays a stale run, and a bad entry is reported and retrained, never loaded."""

import copy
import hashlib
import json
import linecache
import resource
import shutil
import textwrap
import warnings
from pathlib import Path
from unittest import mock

import nbformat
import pytest
import torch
from d2l import torch as d2l
from repo_scripts import script
from torch import nn

import d2l_ext
from d2l_ext import FashionMNIST, StepLosses, experiment, fit, runs
from d2l_ext.batch_norm_tools import GhostBatchNorm, exact_bn_statistics
from d2l_ext.measure import ActivationRecorder
from d2l_ext.runs import RunCacheWarning, measure_once

REPO = Path(__file__).resolve().parents[1]
CFG = experiment("bn_lenet", "ci", verbose=False)
SHORT = dict(max_steps=6, plot=False)  # six steps: a run in well under a second


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty run cache of the test's own; replays allowed (the suite's retrain setting is off)."""
    monkeypatch.setenv("D2L_EXT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("D2L_EXT_RETRAIN", raising=False)
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def data():
    return FashionMNIST(batch_size=64, train_subset=640, val_subset=200, verbose=False)


class Tiny(d2l.Classifier):
    def __init__(self, lr=0.1, width=4):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(width, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
        )


class Toy(d2l.DataModule):
    """A course's own data module: images held as tensors of its own."""

    def __init__(self, X, y, batch_size=64):
        super().__init__()
        self.save_hyperparameters()

    def get_dataloader(self, train):
        return self.get_tensorloader((self.X, self.y), train)


class Scaled(d2l_ext.Callback):
    """A callback whose setting changes the run (the loss times ``factor``), and that presses Ctrl-C
    at step ``stop``, as an instructor interrupts a training."""

    def __init__(self, factor: float = 1.0, stop: int | None = None):
        self.factor, self.stop = factor, stop

    def after_loss(self, trainer):
        trainer.loss = trainer.loss * self.factor

    def after_batch(self, trainer):
        if trainer.train_batch_idx == self.stop:
            raise KeyboardInterrupt


def built(model: nn.Module) -> nn.Module:
    """``model`` with its Lazy layers built, from seed 0."""
    d2l_ext.set_seed(0)
    model(torch.zeros(2, 1, 28, 28))
    return model


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pt"))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train(data, model=None, **settings):
    """A run of ``model`` (default: a new `Tiny`) that records its losses and its first layer's
    outputs; the model, the trainer, the two records, and where the generators stand after it."""
    d2l_ext.set_seed(0)
    model = Tiny() if model is None else model
    losses = StepLosses()
    with ActivationRecorder({"conv": model.net[0]}) as recorder:
        trainer = fit(CFG, model, data, callbacks=[losses], records=[recorder], **(SHORT | settings))
    after = torch.rand(3)  # where the global generator stands after the run
    batch = next(iter(data.train_dataloader()))[1][:8]  # and the loader's own generator
    return model, trainer, (losses.losses, recorder.curves()["conv"]), after, batch


def key_of(model) -> str:
    """The key of ``model`` alone: its structure, settings, weights and code."""
    return runs._key(model, [])[0]


def test_a_replay_is_the_run_it_stored_and_its_record_says_what_it_was(cache, data, capsys):
    m1, t1, l1, after1, batch1 = train(data)
    assert "Replayed" not in capsys.readouterr().out and len(entries(cache)) == 1
    m2, t2, l2, after2, batch2 = train(data)
    out = capsys.readouterr().out
    assert "Replayed from the run cache: 'bn_lenet' (ci preset)" in out
    assert "make the model anew and fit(..., retrain=True)" in out and "D2L_EXT_RETRAIN=1" in out
    assert same_state(m1, m2) and t2.history == t1.history and t2.summary() == t1.summary()
    assert l2[0] == l1[0] and len(l1[0]) == 6 and l1[1][0].shape == (6, 4)
    assert all(torch.equal(a, b) for a, b in zip(l1[1], l2[1], strict=True))  # the recorded outputs
    assert torch.equal(after2, after1) and torch.equal(batch2, batch1)  # what follows sees the same
    X = next(iter(data.val_dataloader()))[0]
    with torch.no_grad():
        assert torch.equal(m1.eval()(X), m2.eval()(X))
    (record,) = cache.rglob("*.json")
    meta = json.loads(record.read_text())
    assert record.parent == cache / "bn_lenet" / "ci"
    assert meta["about"]["experiment"] == "bn_lenet" and meta["about"]["preset"] == "ci"
    assert meta["about"]["trainer"]["max_steps"] == 6 and "plot" not in meta["about"]["trainer"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["about"]["library"] == runs._LIBRARY
    assert meta["seconds"] > 0 and meta["wall_seconds"] >= meta["seconds"]
    assert meta["machine"] and meta["date"][:2] == "20"


GLOBAL_MODEL = """
from d2l import torch as d2l
from torch import nn

SCALE = 1


def act():
    return nn.ReLU()


class Global(d2l.Classifier):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.LazyConv2d(4, 3), act(), nn.Flatten(), nn.LazyLinear(10))

    def forward(self, X):
        return self.net(X) * SCALE
"""


def cell(ns: dict, source: str, name: str | None) -> dict:
    """Run ``source`` in ``ns`` as IPython runs a cell, registered in linecache under ``name`` so that
    its source can be read; with no name, as plain ``exec`` runs it: no source to read."""
    if name:
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    exec(compile(source, name or "<string>", "exec"), ns)
    return ns


def made(source: str, name: str | None):
    """The model of ``source``, defined by a notebook's cell ``name`` (None: by exec, without source)."""
    return cell({"__name__": "__main__"}, source, name)["Global"]()


def test_what_changes_a_run_misses_the_cache_and_what_does_not_hits(cache, data, capsys):
    train(data)
    train(data, max_steps=7)  # another run
    train(data, model=Tiny(width=5))  # another model
    train(data, model=Tiny(lr=0.05))  # another hyperparameter
    train(FashionMNIST(batch_size=64, train_subset=320, val_subset=200, verbose=False))  # other data
    images, labels = data.train.images[:256].float() / 255, data.train.targets[:256]
    for X in (images[:, None], images.flip(-1)[:, None]):  # a data module of the same class, other tensors
        fit(CFG, Tiny(), Toy(X, labels), **SHORT)
    X[:8] = 0  # the same tensor, changed in place
    fit(CFG, Tiny(), Toy(X, labels), **SHORT)
    for factor in (1.0, 2.0):  # another setting of an extra callback
        fit(CFG, Tiny(), data, callbacks=[Scaled(factor)], **SHORT)
    for scale in (1, 2):  # a notebook global that forward reads
        fit(CFG, made(GLOBAL_MODEL.replace("SCALE = 1", f"SCALE = {scale}"), f"<{scale}>"), data, **SHORT)
    assert "Replayed" not in capsys.readouterr().out and len(entries(cache)) == 12
    train(data, plot=True)  # drawing does not change the run
    assert "Replayed" in capsys.readouterr().out and len(entries(cache)) == 12
    keys = set()  # a submodule's setting that repr does not show: a ghost batch's size, a frozen BN
    for size, frozen in ((2, False), (4, False), (4, True)):
        model = built(Tiny())
        model.net[1] = GhostBatchNorm(model.net[1], size)
        model.net[1].train(not frozen)  # a frozen BN layer trains differently
        keys.add(key_of(model))
    assert len(keys) == 3


@pytest.mark.parametrize(
    "edit, same",
    [
        (("return self.net(X)", "return self.net(X) * 2"), False),  # the forward pass
        (("return nn.ReLU()", "return nn.Tanh()"), False),  # a function the model's code calls
        (("SCALE = 1", "SCALE = 2"), False),  # a plain global that forward reads
        (("* SCALE", "* SCALE  # why"), False),  # a comment inside a definition counts
        (("SCALE = 1", "# a comment\n\nUNUSED = 1\nSCALE = 1"), True),  # code between definitions
    ],
    ids=["forward", "called-function", "global", "comment-inside", "moved-cell"],
)
@pytest.mark.parametrize("with_source", [True, False])
def test_a_model_counts_by_its_code_and_the_globals_it_reads(edit, same, with_source):
    name = "<{}>" if with_source else None  # without source: its bytecode counts, comments aside
    key = key_of(made(GLOBAL_MODEL, name and name.format(1)))
    assert key_of(made(GLOBAL_MODEL, name and name.format(2))) == key  # the same code twice: one key
    edited = key_of(made(GLOBAL_MODEL.replace(*edit), name and name.format(3)))
    assert (edited == key) == (same or not with_source and "#" in edit[1])


def test_the_library_counts_by_the_bytes_of_its_files(tmp_path, monkeypatch):
    package = tmp_path / "d2l_ext"  # a copy: the real files are never touched
    shutil.copytree(Path(d2l_ext.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = runs._source_digest(package)
    (package / ".#runs.py").write_text("an editor's lock file")  # no module: does not count
    assert runs._source_digest(package) == before
    with open(package / "training.py", "a") as f:
        f.write("# a comment\n")  # a comment is a change too: simpler than telling it apart
    assert runs._source_digest(package) != before
    key = key_of(Tiny())
    monkeypatch.setitem(runs._LIBRARY, "d2l_ext", runs._source_digest(package))
    assert key_of(Tiny()) != key


def test_a_class_defined_in_its_notebook_and_its_exported_copy_share_their_runs(monkeypatch):
    # 04 replays the ResNet run that 02 trained, and a section run alone after a restart, with the
    # classes imported from d2l_ext, replays the notebook's: both must give the key that the classes
    # defined in 02's cells (spread over cells by add_to_class, super(ResNet, self)) give.
    from d2l_ext import resnet

    names = ["check_count", "Residual", "ResNet", "check_arch"]
    ns: dict = {"__name__": "__main__"}
    exec("import torch\nfrom torch import nn\nfrom torch.nn import functional as F\nimport operator", ns)
    exec("from d2l import torch as d2l", ns)
    for i, c in enumerate(json.loads((REPO / "notebooks" / "02_resnet.ipynb").read_text())["cells"]):
        source = "".join(c["source"])
        defines = any(f"class {n}(" in source or f"def {n}(" in source for n in names)
        if c["cell_type"] == "code" and (defines or any(f"add_to_class({n})" in source for n in names)):
            cell(ns, source, f"<cell-{i}>")
    assert ns["ResNet"] is not resnet.ResNet and ns["ResNet"].__module__ == "__main__"
    cfg = experiment("resnet", "ci", verbose=False)
    library = key_of(resnet.ResNet(**cfg.model))
    assert key_of(ns["ResNet"](**cfg.model)) == library
    # A cell edited in the lecture is no copy: a function that the class reads ...
    cell(ns, "def check_arch(arch):\n    return tuple(map(tuple, arch))\n", "<edited-1>")
    edited = key_of(ns["ResNet"](**cfg.model))
    assert edited != library
    # ... or a method that add_to_class puts into a submodule's class
    cell(ns, "@d2l.add_to_class(Residual)\ndef forward(self, X):\n    return X\n", "<edited-2>")
    assert key_of(ns["ResNet"](**cfg.model)) not in (edited, library)
    # A notebook's function put into a class of d2l_ext or d2l (a base of Tiny's) counts too
    for cls, model in ((resnet.Residual, lambda: nn.Sequential(resnet.Residual(4))), (d2l.Module, Tiny)):
        key = key_of(model())
        monkeypatch.setattr(cls, "forward", lambda self, X: X)  # as @d2l.add_to_class(cls) does
        assert key_of(model()) != key
        monkeypatch.undo()
        assert key_of(model()) == key


def corrupt(pt: Path) -> None:
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pt.write_bytes(bytes(raw))


def rewrite(pt: Path, edit_body=None, edit_record=None) -> None:
    """Change an entry's body or record, with a matching checksum: whole, but wrong inside."""
    if edit_body is not None:
        torch.save(edit_body(torch.load(pt, weights_only=True)), pt)
    record = json.loads(pt.with_suffix(".json").read_text())
    record["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    pt.with_suffix(".json").write_text(json.dumps(edit_record(record) if edit_record else record))


def without(name):
    return lambda d: {k: v for k, v in d.items() if k != name}


@pytest.mark.parametrize(
    "damage, message",
    [
        pytest.param(corrupt, "corrupt", id="flipped-byte"),
        pytest.param(lambda pt: pt.write_bytes(pt.read_bytes()[:100]), "corrupt", id="truncated"),
        pytest.param(lambda pt: pt.with_suffix(".json").unlink(), "partial", id="no-record"),
        pytest.param(lambda pt: pt.with_suffix(".json").write_text("{"), "unreadable", id="bad-record"),
        pytest.param(
            lambda pt: rewrite(pt, lambda b: b | {"state": built(Tiny(width=5)).state_dict()}),
            "other names or shapes",
            id="other-shapes",
        ),
        pytest.param(lambda pt: rewrite(pt, without("torch_rng")), "no torch_rng", id="no-rng"),
        pytest.param(lambda pt: rewrite(pt, lambda b: b | {"records": []}), "recorders", id="no-records"),
        pytest.param(lambda pt: rewrite(pt, None, without("date")), "no date", id="record-without-date"),
        pytest.param(lambda pt: rewrite(pt, None, lambda r: [r]), "corrupt", id="record-is-a-list"),
    ],
)
def test_a_bad_entry_is_reported_retrained_and_replaced(cache, data, capsys, damage, message):
    fresh, *_ = train(data)
    (pt,) = entries(cache)
    damage(pt)
    with pytest.warns(RunCacheWarning, match=message):
        model, trainer, *_ = train(data)
    assert "Replayed" not in capsys.readouterr().out and trainer.history[-1]["steps"] == 6
    assert same_state(model, fresh)  # trained as a fresh run would, from the same start
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunCacheWarning)
        train(data)
    assert "Replayed" in capsys.readouterr().out  # the entry is whole again


@pytest.mark.parametrize("failure", ["file-size-limit", "runtime-error", "not-a-folder"])
def test_a_store_that_fails_warns_and_keeps_the_trained_model(cache, data, tmp_path, failure):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with pytest.MonkeyPatch.context() as mp:
        if failure == "file-size-limit":  # Python ignores SIGXFSZ: the write fails instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, hard))
        elif failure == "runtime-error":  # what torch.save raises for a full disk
            mp.setattr(torch, "save", mock.Mock(side_effect=RuntimeError("PytorchStreamWriter failed")))
        else:
            (tmp_path / "file").write_text("not a folder")
            mp.setenv("D2L_EXT_RUNS", str(tmp_path / "file" / "runs"))
        try:
            with pytest.warns(RunCacheWarning, match="could not be stored"):
                model, trainer, *_ = train(data)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert trainer.history[-1]["steps"] == 6 and not list(tmp_path.rglob("*.json"))
    again, *_ = train(data)  # it trains again, and is stored this time
    assert same_state(again, model) and len(entries(cache)) == 1


def test_the_cache_stays_in_its_folder_and_the_environment_turns_it_off_or_retrains(
    cache, data, tmp_path, capsys, monkeypatch
):
    train(data)
    elsewhere, folder = tmp_path / "elsewhere", cache / "bn_lenet" / "ci"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere)  # a planted link, to a whole entry
    before = {path.name: path.read_bytes() for path in elsewhere.iterdir()}
    with pytest.warns(RunCacheWarning, match="outside"):
        train(data)
    assert "Replayed" not in capsys.readouterr().out  # neither read ...
    assert {path.name: path.read_bytes() for path in elsewhere.iterdir()} == before  # ... nor written
    with pytest.raises(ValueError, match="plain name"):
        measure_once(lambda m, loader: 0, Tiny(), data.train_dataloader(), name="../escape")
    folder.unlink()
    monkeypatch.chdir(tmp_path)
    for setting in ("off", "false"):
        monkeypatch.setenv("D2L_EXT_RUNS", setting)
        train(data)
        train(data)
        assert not (tmp_path / setting).exists()
    assert "Replayed" not in capsys.readouterr().out and not entries(cache)
    monkeypatch.setenv("D2L_EXT_RUNS", str(cache))
    train(data)
    train(data, retrain=True)
    monkeypatch.setenv("D2L_EXT_RETRAIN", "1")
    train(data)
    assert "Replayed" not in capsys.readouterr().out
    monkeypatch.setenv("D2L_EXT_RETRAIN", "false")
    train(data)
    assert "Replayed" in capsys.readouterr().out
    monkeypatch.setenv("D2L_EXT_RETRAIN", "maybe")
    with pytest.raises(ValueError, match="D2L_EXT_RETRAIN"):
        train(data)


def test_a_continued_or_interrupted_training_is_stored_apart_from_the_fresh_run(
    cache, data, capsys, tmp_path
):
    # Built before the runs (as layer_summary builds a lazy model): only their weights tell them apart.
    fresh, *_ = train(data, model=built(Tiny()))
    fit(CFG, fresh, data, **SHORT)  # d2l: fitting again continues from the trained weights ...
    assert len(entries(cache)) == 2  # ... a run of its own, since it starts from other weights
    interrupted = built(Tiny())
    with pytest.raises(KeyboardInterrupt):
        fit(CFG, interrupted, data, callbacks=[Scaled(stop=3)], **SHORT)
    train(data, model=interrupted)  # the same cell run again on the half-trained model
    assert len(entries(cache)) == 3 and "Replayed" not in capsys.readouterr().out
    model, *_ = train(data, model=built(Tiny()))  # a new model replays the fresh run
    assert "Replayed" in capsys.readouterr().out
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("D2L_EXT_RUNS", str(tmp_path / "reference"))
        trained, *_ = train(data, model=built(Tiny()))
    assert same_state(model, trained) and not same_state(model, interrupted)
    with pytest.raises(ValueError, match=r"continue from them.*make the model anew"):
        fit(CFG, model, data, retrain=True, **SHORT)  # the replayed model: what the replay line says
    with pytest.raises(TypeError, match="experiment"):
        fit(Tiny(), data, CFG)


def test_make_warm_stores_the_runs_a_notebook_asks_for_and_names_a_section_that_leans_on_another(
    cache, tmp_path, capsys, monkeypatch
):
    warm, md, code = script("tools/warm.py"), nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    notebook = tmp_path / "01_toy.ipynb"
    source = """
        from d2l_ext import FashionMNIST, experiment, fit
        from d2l_ext.batch_norm import BNLeNet

        cfg = experiment("bn_lenet", verbose=False)
        data = FashionMNIST(batch_size=64, train_subset=320, val_subset=100, verbose=False)
        fit(cfg, BNLeNet(**cfg.model), data, max_steps=3, plot=False).summary()
    """
    nbformat.write(nbformat.v4.new_notebook(cells=[code(textwrap.dedent(source))]), notebook)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("D2L_EXT_PRESET", "ci")  # warm sets it for its kernels; restored after the test
    assert warm.main([str(notebook), "--preset", "ci"]) == 0
    assert "replayed (runs, measurements): 0" in capsys.readouterr().out and len(entries(cache)) == 1
    record = tmp_path / "record" / "warm.json"
    assert warm.main([str(notebook), "--preset", "ci", "--record", str(record)]) == 0
    assert "replayed (runs, measurements): 1" in capsys.readouterr().out and len(entries(cache)) == 1
    written = json.loads(record.read_text())
    assert written["preset"] == "ci" and written["notebooks"]["01_toy.ipynb"]["replayed"] == 1
    assert 0 < written["notebooks"]["01_toy.ipynb"]["seconds"] and "cores" in written["machine"]
    assert nbformat.read(notebook, as_version=4).cells[0].get("outputs") == []  # nothing written back
    cells = [md("# 99 · Toy"), code("x = 1"), md("## One"), code("y = x + 1"), md("## Two"), code("y * 2")]
    cells += [md("## Summary"), code("x, y")]  # a closing section may read every section's names
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook := tmp_path / "99_toy.ipynb")
    assert warm.main([str(notebook), "--sections", "--timeout", "60"]) == 1
    out, err = capsys.readouterr()
    assert "One" in out and "99_toy.ipynb, section '## Two': it fails in a fresh kernel" in err
    assert "NameError" in err and "Summary" not in out + err


# -- a measurement of a trained model (exact BN statistics), stored and replayed ------------------


def exact_pass(model, loader, at, **kwargs):
    """`exact_bn_statistics` on a copy of ``model``, with ``loader``'s batches in the order ``at``
    (a generator state); the statistics, the copy, and the loader's state afterwards."""
    net = copy.deepcopy(model)
    loader.generator.set_state(at)
    stats = exact_bn_statistics(net, loader, **kwargs)
    return stats, net, loader.generator.get_state()


def test_exact_statistics_are_stored_replayed_and_computed_again_when_anything_changes(
    cache, data, capsys, monkeypatch
):
    trained, *_ = train(data)  # BN's running estimates after six steps: far from the exact ones
    model, loader = trained.net, data.train_dataloader()  # its layers, as notebook 01 measures
    at = loader.generator.get_state()
    stats1, net1, after1 = exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out
    (pt,) = (cache / "measurements" / "exact_bn_statistics").glob("*.pt")
    assert not same_state(net1, model)  # the pass replaced the running estimates
    stats2, net2, after2 = exact_pass(model, loader, at)
    out = capsys.readouterr().out
    assert "Replayed from the run cache: exact_bn_statistics of this model over 640 images" in out
    assert "recompute=True" in out and "D2L_EXT_RETRAIN=1" in out
    assert len(stats2) == len(stats1) == 1 and all(
        torch.equal(a, b) for s1, s2 in zip(stats1, stats2) for a, b in zip(s1, s2)
    )
    assert same_state(net2, net1) and torch.equal(after2, after1)  # what follows cannot tell
    corrupt(pt)
    with pytest.warns(RunCacheWarning, match="corrupt"):
        _, net3, _ = exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out and same_state(net3, net1)
    exact_pass(model, loader, at)
    assert "Replayed" in capsys.readouterr().out  # the entry is whole again
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 1e-6  # one weight, barely
    exact_pass(changed, loader, at)
    exact_pass(model, loader, loader.generator.get_state())  # another order of the batches
    other = FashionMNIST(batch_size=64, train_subset=320, val_subset=200, verbose=False).train_dataloader()
    exact_pass(model, other, other.generator.get_state())  # other images
    assert len(list((cache / "measurements").rglob("*.pt"))) == 4
    for _ in range(2):  # a plain list: its contents could change unseen, so it is not stored
        exact_bn_statistics(copy.deepcopy(model), [next(iter(loader))] * 2)
    assert len(list((cache / "measurements").rglob("*.pt"))) == 4
    exact_pass(model, loader, at, recompute=True)
    monkeypatch.setenv("D2L_EXT_RETRAIN", "1")
    exact_pass(model, loader, at)
    monkeypatch.setenv("D2L_EXT_RUNS", "off")
    for _ in range(2):
        exact_pass(model, loader, at)
    assert "Replayed" not in capsys.readouterr().out and len(list(cache.rglob("*.pt"))) == 5

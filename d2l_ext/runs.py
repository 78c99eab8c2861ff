"""Trained runs, stored and replayed: a lecture never waits twice for the same training.

Every training of the notebooks goes through `fit`, the one entry point: ``trainer = fit(cfg,
model, data)`` trains ``model`` as ``Trainer(**cfg.trainer).fit(model, data)`` would, then stores
the finished run in the run cache: the weights, the per-epoch history, the state of the pieces
that recorded something (`StepLosses`, the live plot's points, `ActivationRecorder`), the random
generators' states, and what the run was (settings, preset, machine, wall time, library versions).
Asked for the same run again, `fit` loads it instead of training, in a second: the same model,
history, plots and tables, with one printed line that says it was replayed and how to retrain.

The cache is ``$D2L_EXT_RUNS``, else the ``runs`` folder of d2l_ext's cache (``$D2L_EXT_CACHE``,
else ``~/.cache/d2l_ext``); ``D2L_EXT_RUNS=off`` turns it off. ``fit(..., retrain=True)`` or
``D2L_EXT_RETRAIN=1`` trains afresh (and stores the new run). An entry is written atomically, its
bytes are checked against the digest stored beside it, and one that is corrupt, partial, or whose
content does not fit the model is reported and retrained, never loaded; a store that fails warns and
keeps the trained model.

A run is found by its key, a digest of everything that decides its result: the experiment and
preset, the trainer's settings, the data's settings and content (the bytes of its tensors), the
model's structure, hyperparameters and state when training starts (a model that trained already, or
was interrupted, starts elsewhere than a new one), the extra pieces' classes and settings, and the
code. The library counts whole: the bytes of d2l_ext's source files (so any edit there, a comment
too, retrains every run) and d2l's pinned version; other installed packages, torch among them, do
not count (their versions are recorded with the run). Code outside them, a notebook's or a course's
own module's, counts by its source: each class of the model and the pieces, their bases, and the
classes and functions that this code reads, with the plain values and tensors of the globals it
reads (a comment inside such a definition counts, a moved cell does not). A notebook's ``#@save``
definition that is the same as its copy in d2l_ext and reads the same things counts as that copy: 04
replays the runs of 02 and 03, and a section run alone after a restart replays the notebook's. A
changed model, setting or line of code therefore misses the cache and trains; it never replays a
stale run.

A long measurement of a trained model is kept the same way, by `measure_once`: the exact batch-norm
statistics of a network over the training set (a pass per BN layer) are computed once per set of
weights and then replayed, so a warm lecture never waits for them either.
"""

from __future__ import annotations

import contextlib
import datetime
import dis
import functools
import hashlib
import inspect
import json
import os
import platform
import random
import re
import sys
import textwrap
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import d2l
import torch
from torch import nn

from d2l_ext import data as _data
from d2l_ext.training import Callback, Trainer

__all__ = [
    "RunCache",
    "RunCacheWarning",
    "code_digest",
    "cpu_name",
    "fit",
    "machine_name",
    "measure_once",
    "measurement_key",
    "run_key",
    "runs_dir",
    "source_digest",
]

FORMAT = 2  # the layout of a stored run; a new layout makes old entries miss
RUNS_ENV, RETRAIN_ENV = "D2L_EXT_RUNS", "D2L_EXT_RETRAIN"
# Trainer settings that do not change what a run computes.
_NOT_IN_KEY = {"plot", "clock", "num_gpus"}


class RunCacheWarning(UserWarning):
    """A run cache entry that cannot be used (corrupt, partial, unwritable): the run trains instead."""


def runs_dir() -> Path | None:
    """The run cache's folder: ``$D2L_EXT_RUNS``, else ``<d2l_ext cache>/runs``; None when it is ``off``."""
    setting = os.environ.get(RUNS_ENV, "").strip()
    if setting.lower() in ("off", "0", "none", "false", "no"):
        return None
    return Path(setting).expanduser() if setting else _data.cache_dir() / "runs"


def _retrain_from_env() -> bool:
    value = os.environ.get(RETRAIN_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{RETRAIN_ENV}={value!r}: set it to 1 to retrain every run, or leave it unset.")


# -- what a run is: its key ---------------------------------------------------------------------------


def source_digest(folder: Path) -> str:
    """SHA-256 of the modules under ``folder``: each ``*.py`` file's relative name and bytes, in sorted
    order (an editor's lock file, ``.#runs.py``, is no module)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.py") if p.stem.isidentifier()):
        raw = path.read_bytes()
        h.update(f"{path.relative_to(folder).as_posix()} {len(raw)}\n".encode() + raw)
    return h.hexdigest()


# The library this process runs: d2l_ext's files read once, at import, next to the code Python loaded
# from them (an edit runs only after a restart, which reads them again); d2l is pinned, its version
# stands for its code.
_LIBRARY = {"d2l_ext": source_digest(Path(__file__).parent), "d2l": d2l.__version__}
_PLAIN = (bool, int, float, str, type(None))


def _outside(obj) -> bool:
    """Whether ``obj`` is code that neither the library's digest nor a package's version covers: a
    notebook's (``__main__``) or a course's own module's (one not installed as a package), or a
    class that holds such a function, itself or in a base (d2l's ``add_to_class`` puts one there)."""
    module = getattr(obj, "__module__", None) or ""
    file = getattr(sys.modules.get(module), "__file__", None) or ""
    top = module.split(".")[0]
    if module == "__main__" or not (
        top in ("d2l", "d2l_ext", "builtins")
        or top in sys.stdlib_module_names
        or any(part in ("site-packages", "dist-packages") for part in Path(file).parts)
    ):
        return True
    return inspect.isclass(obj) and any(_outside(fn) for c in obj.__mro__ for fn in _functions(c))


def _functions(obj) -> list:
    """A function itself, or a class's own functions by name (static, class and property ones too)."""
    if inspect.isfunction(obj):
        return [obj]
    found = (getattr(v, "__func__", getattr(v, "fget", v)) for _, v in sorted(vars(obj).items()))
    return [fn for fn in found if inspect.isfunction(fn)]


@functools.cache  # a function's code never changes, its file may: the source read first stays
def _source(fn, owner: str) -> str:
    """``fn``'s source as tools/export.py copies a notebook's ``#@save`` definition into d2l_ext:
    without the save marks and the ``add_to_class`` decorator, ``super()`` for ``super(owner, self)``."""
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # no source (made by exec): its bytecode
        return _bytecode(fn.__code__)
    text = re.sub(r"^@.*\badd_to_class\(.*\n", "", text, flags=re.M)
    text = re.sub(r"[ \t]*#[ \t]*@save[ \t]*$", "", text, flags=re.M).rstrip()  # a cell ends without \n
    return re.sub(rf"\bsuper\(\s*{owner}\s*,\s*\w+\s*\)", "super()", text)


def _bytecode(code) -> str:
    # A frozenset's order follows string hashing, which varies per process.
    consts = (
        _bytecode(c) if inspect.iscode(c) else sorted(map(repr, c)) if isinstance(c, frozenset) else c
        for c in code.co_consts
    )
    return repr((code.co_code, code.co_names, *consts))


def _text(obj) -> str:
    """A function's code, or a class's: its name, bases, plain attributes and functions."""
    if inspect.isfunction(obj):
        return _source(obj, "")
    header = f"class {obj.__name__}{[b.__qualname__ for b in obj.__bases__]} {_attributes(obj)}"
    return "\n".join([header, *(_source(fn, obj.__name__) for fn in _functions(obj))])


def _global_names(code) -> set[str]:
    """The globals that ``code`` and the code inside it load (``self.net`` is an attribute, no global)."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    return names.union(*(_global_names(c) for c in code.co_consts if inspect.iscode(c)))


def _reads(fn) -> dict[str, Any]:
    """The globals and closure variables that ``fn`` reads, with their values now."""
    read = {name: fn.__globals__.get(name) for name in _global_names(fn.__code__)}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        with contextlib.suppress(ValueError):  # an empty cell: a variable not assigned yet
            value = cell.cell_contents  # super()'s cell __class__ holds the class super(C, self) names
            read[value.__name__ if name == "__class__" else name] = value
    return read


def _same(a, b, assumed: set[tuple[int, int]]) -> bool:
    """Whether ``a`` does what ``b`` does: the same object, an equal plain value or tensor, or classes
    or functions with the same `_text` whose bases and reads are in turn the same."""
    if a is b or type(a) is not type(b):
        return a is b
    if isinstance(a, (*_PLAIN, torch.Tensor)):
        return _value_text(a) == _value_text(b)
    if not (inspect.isclass(a) or inspect.isfunction(a)) or _text(a) != _text(b):
        return False
    if (id(a), id(b)) in assumed:  # a definition that reads itself (super(C, self)), compared already
        return True
    assumed.add((id(a), id(b)))
    pairs = [*zip(getattr(a, "__bases__", ()), getattr(b, "__bases__", ()), strict=True)]
    for f, g in zip(_functions(a), _functions(b), strict=True):
        reads_f, reads_g = _reads(f), _reads(g)
        pairs += [(reads_f.get(name), reads_g.get(name)) for name in reads_f.keys() | reads_g.keys()]
    return all(_same(x, y, assumed) for x, y in pairs)


def _exported(obj) -> bool:
    """Whether ``obj`` is, by `_same`, the library's definition of its name: a notebook's ``#@save``
    cell, which tools/export.py copies into d2l_ext. Its runs are the library's: 04 replays what 02
    trained, and so does a section that runs alone after a restart, with the classes imported."""
    loaded = [
        vars(m).get(obj.__name__) for name, m in list(sys.modules.items()) if name.startswith("d2l_ext.")
    ]
    return any(twin is not None and not _outside(twin) and _same(obj, twin, set()) for twin in loaded)


def code_digest(*objects) -> str:
    """A digest of the code of ``objects`` (classes, functions, instances: their classes) that the
    library's digest and the packages' versions do not cover: each class or function that is
    `_outside` and not `_exported`, by its `_text`, with its bases, the plain values and tensors
    it reads, and in turn the classes and functions it reads."""
    seen: set[int] = set()
    parts: list[str] = []

    def walk(obj) -> None:
        if id(obj) in seen or not _outside(obj) or _exported(obj):
            return
        seen.add(id(obj))
        parts.append(_text(obj))
        for base in getattr(obj, "__bases__", ()):
            walk(base)
        for fn in _functions(obj):
            for name, value in sorted(_reads(fn).items()):
                if inspect.isclass(value) or inspect.isfunction(value):
                    walk(value)
                elif isinstance(value, (*_PLAIN, torch.Tensor)):  # a notebook's SCALE = 2 read in forward
                    parts.append(f"{fn.__qualname__} reads {name} = {_value_text(value)}")

    for obj in objects:
        walk(obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _value_text(value) -> str:
    """A plain value as text for the key; a tensor by its dtype, shape and bytes."""
    return _tensor_digest(value).hex() if isinstance(value, torch.Tensor) else repr(value)


def _plain(value) -> Any:
    """A JSON-able, deterministic form of a setting."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def run_key(
    cfg,
    model: nn.Module,
    data,
    settings: dict[str, Any],
    pieces: Sequence[object] = (),
) -> tuple[str, dict[str, Any]] | None:
    """The key of a run (hex digest) and what it was computed from, or None for data whose content
    cannot be read (`_data_digest`): its run is not stored.

    ``settings`` are the trainer's (``cfg.trainer`` with any overrides), ``pieces`` the extra
    callbacks and recorders (their classes and plain settings). The model counts by its structure
    (``repr``), its hyperparameters, every submodule's plain attributes, every weight and buffer it
    holds now (a Lazy layer not built yet counts as such), and the library and its submodules' and
    the pieces' classes count by their code (`code_digest`).
    """
    data_digest = _data_digest(data)
    if data_digest is None:
        return None
    classes = _classes(model)
    about = {
        "format": FORMAT,
        "experiment": cfg.name,
        "preset": cfg.preset,
        "trainer": _plain({k: v for k, v in settings.items() if k not in _NOT_IN_KEY}),
        "data": _plain({k: v for k, v in getattr(data, "hparams", {}).items() if k != "download"}),
        "data_class": type(data).__qualname__,
        "model": repr(model),
        "modules": _module_settings(model),
        "model_hparams": _plain(getattr(model, "hparams", {})),
        "start": _state_digest(model),
        "data_content": data_digest,
        "pieces": [[type(p).__qualname__, _attributes(p)] for p in pieces],
        "code": code_digest(*classes, *pieces),
        "library": _LIBRARY,
    }
    return _digest(about), about


def _classes(model: nn.Module) -> list[type]:
    """The classes of ``model``'s submodules, itself included, in a fixed order."""
    return sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__)


def _digest(about: dict[str, Any]) -> str:
    """The key (hex digest) of what a run or a measurement was computed from."""
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:32]


def _attributes(obj) -> dict[str, Any]:
    """``obj``'s plain public attributes (numbers, strings, flags, tuples of them)."""
    plain = {
        k: _plain(v)
        for k, v in vars(obj).items()
        if not k.startswith("_")
        and (isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)))
    }
    return dict(sorted(plain.items()))


def _module_settings(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Each submodule's plain attributes (e.g. a BN layer's eps, a wrapper's group size, a frozen
    layer's ``training``), which ``repr`` need not show."""
    return {name or "(model)": _attributes(module) for name, module in model.named_modules()}


def _data_digest(data) -> str | None:
    """A digest of the tensors that ``data`` holds (its attributes, and theirs, two levels down: a
    data set's images and labels), or None when it holds none (its data could change unseen)."""
    h, seen, tensors = hashlib.sha256(), set(), 0

    def add(value, depth: int) -> None:
        nonlocal tensors
        if id(value) in seen or isinstance(value, nn.Module):
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            h.update(_tensor_digest(value))
            tensors += 1
        elif depth and isinstance(value, list | tuple):
            for item in value:
                add(item, depth - 1)
        elif depth and hasattr(value, "__dict__"):
            for _, item in sorted(vars(value).items()):
                add(item, depth - 1)

    add(data, 3)
    return h.hexdigest() if tensors else None


# -- where runs are kept ---------------------------------------------------------------------------


class RunCache:
    """Runs on disk: ``<folder>/<experiment>/<preset>/<key>.pt`` (the run, `torch.save`; a stored
    measurement, `measure_once`: ``<folder>/measurements/<name>/<key>.pt``) and
    ``<key>.json`` (what it was and the SHA-256 of the ``.pt`` file), each written atomically, the
    ``.json`` last: an entry without it is partial, one whose bytes differ from it is corrupt."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def paths(self, cfg, key: str) -> tuple[Path, Path]:
        """The entry's two files; ``cfg`` is a run's experiment, or a folder of the cache (a str)."""
        where = self.folder / (Path(cfg) if isinstance(cfg, str) else Path(cfg.name, cfg.preset))
        return where / f"{key}.pt", where / f"{key}.json"

    def outside(self, path: Path) -> bool:
        """Whether ``path`` leads out of the cache's folder (a planted link): never read or written."""
        return not path.resolve().is_relative_to(self.folder.resolve())

    def load(self, cfg, key: str, fits=lambda run: "") -> dict[str, Any] | None:
        """The stored run, or None when there is none; a bad entry is reported (`RunCacheWarning`)
        and ignored, so the run trains and replaces it. ``fits(run)`` says why a whole entry's
        content cannot be used ("" where it can)."""
        pt, meta_path = self.paths(cfg, key)
        if self.outside(pt):
            self.bad(pt, f"outside the run cache {self.folder} (a link?)")
            return None
        if not meta_path.exists():
            if pt.exists():
                self.bad(pt, "partial: its .json record is missing (was the writer interrupted?)")
            return None
        try:
            meta = json.loads(meta_path.read_text())
            raw = pt.read_bytes()
        except (OSError, ValueError) as e:
            self.bad(pt, f"unreadable: {e}")
            return None
        if not isinstance(meta, dict) or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            self.bad(pt, "corrupt: its bytes do not match the SHA-256 in its .json record")
            return None
        try:
            with open(pt, "rb") as f:
                run = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle means: do not use it
            self.bad(pt, f"unloadable: {type(e).__name__}: {e}")
            return None
        if not isinstance(run, dict) or run.get("key") != key or run.get("format") != FORMAT:
            self.bad(pt, "not this run (another key or format)")
            return None
        run["meta"] = meta
        if why := fits(run):
            self.bad(pt, f"not usable: {why}")
            return None
        return run

    def store(self, cfg, key: str, run: dict[str, Any], meta: dict[str, Any]) -> Path | None:
        """Write the run; on any error (a read-only or full disk, a file-size limit, a link out of
        the cache) warn and return None: the trained model is in memory either way."""
        pt, meta_path = self.paths(cfg, key)
        try:
            if self.outside(pt):
                raise OSError(f"{pt.parent} leads outside the cache (a link?)")
            pt.parent.mkdir(parents=True, exist_ok=True)
            _data.write_atomic(pt, lambda f: torch.save(run, f))
            with open(pt, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            record = json.dumps({**meta, "sha256": digest}, indent=1, sort_keys=True).encode()
            _data.write_atomic(meta_path, lambda f: f.write(record))
        except Exception as e:  # noqa: BLE001 - torch.save raises RuntimeError for a full disk
            warnings.warn(
                f"The run could not be stored in the run cache {self.folder} ({e}); it will train "
                f"again next time. Set {RUNS_ENV} to a writable folder, or {RUNS_ENV}=off.",
                RunCacheWarning,
                stacklevel=3,
            )
            return None
        return pt

    @staticmethod
    def bad(pt: Path, why: str) -> None:
        warnings.warn(
            f"Run cache entry {pt} is {why}. It is not used: the run trains again (a measurement "
            "is computed again) and replaces it.",
            RunCacheWarning,
            stacklevel=4,
        )


# -- training or replaying --------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    fallback = platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), fallback)


def machine_name() -> str:
    """The CPU's name and its number of cores, e.g. ``AMD EPYC, 2 cores``: where a record was made."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{machine_name()}, {torch.get_num_threads()} torch threads"


def _loader_generator(data):
    loader = data.train_dataloader() if hasattr(data, "train_dataloader") else None
    return getattr(loader, "generator", None)


def fit(
    cfg,
    model: nn.Module,
    data,
    *,
    callbacks: Sequence[Callback] = (),
    records: Sequence[object] = (),
    retrain: bool | None = None,
    **settings,
) -> Trainer:
    """Train ``model`` on ``data`` under experiment ``cfg``, or replay the stored run: the trainer.

    Trains as ``Trainer(**cfg.trainer, **settings, callbacks=callbacks).fit(model, data)`` and
    stores the finished run; when that run is stored already, loads it instead (weights, history,
    recorded pieces, random states) and prints where it came from.

    Args:
        cfg: the experiment (`experiment(name)`): its name, preset and trainer settings.
        model, data: as for ``Trainer.fit``; a model that trained already is trained on, unstored.
        callbacks: more `Callback` pieces; those with ``state_dict`` (e.g. `StepLosses`) are
            stored with the run and restored on replay.
        records: other recorders of the run (e.g. an `ActivationRecorder` around the model), stored
            and restored through their ``state_dict`` and ``load_state_dict``.
        retrain: train even if the run is stored (default: ``$D2L_EXT_RETRAIN``).
        **settings: Trainer settings that override ``cfg.trainer`` (e.g. ``plot=False``, ``seed=1``).
    """
    if not all(hasattr(cfg, a) for a in ("name", "preset", "trainer")):  # not an `Experiment`
        raise TypeError(f"fit takes the experiment first, cfg = experiment('resnet'); got {cfg!r}.")
    if retrain and getattr(model, "_d2l_ext_run", None) is not None:
        raise ValueError(
            "This model holds the weights of a finished run, so retrain=True would continue from "
            "them instead of training afresh: make the model anew (e.g. model = ResNet(**cfg.model)), "
            "then fit(cfg, model, data, retrain=True)."
        )
    settings = {**cfg.trainer, **settings}
    trainer = Trainer(**settings, callbacks=callbacks)
    folder = runs_dir()
    retrain = _retrain_from_env() if retrain is None else retrain
    found = None if folder is None else run_key(cfg, model, data, settings, [*callbacks, *records])
    if found is None:
        trainer.fit(model, data)
        model._d2l_ext_run = "not stored"
        return trainer
    cache, (key, about) = RunCache(folder), found
    run = None if retrain else cache.load(cfg, key, lambda run: _whole(run, records))
    if run is not None:  # built as a training starts (seeded and initialized) to check its weights
        trainer.prepare_data(data)
        trainer.prepare_model(model)
        if why := _fits(run["state"], model):
            cache.bad(cache.paths(cfg, key)[0], f"not usable: {why}")
            trainer.extra_callbacks.insert(0, _RandomState(data))
            run = None
    if run is not None:
        _replay(trainer, model, data, run, records)
        meta = run["meta"]
        print(
            f"Replayed from the run cache: {cfg.name!r} ({cfg.preset} preset), trained "
            f"{meta['date']} on {meta['machine']}, {meta['train_seconds']:.0f} s of training. "
            f"To train it live: make the model anew and fit(..., retrain=True), or {RETRAIN_ENV}=1 "
            "for every run."
        )
    else:
        start, when = time.perf_counter(), datetime.datetime.now()
        trainer.fit(model, data)
        wall = time.perf_counter() - start
        stored = _record(trainer, model, data, key, records)
        meta = {
            "key": key,
            "about": about,
            **_provenance(when, trainer.device),
            "train_seconds": trainer.history[-1]["seconds"] if trainer.history else 0.0,
            "wall_seconds": wall,
        }
        cache.store(cfg, key, stored, meta)
    model._d2l_ext_run = key
    return trainer


def _provenance(when: datetime.datetime, device: torch.device) -> dict[str, Any]:
    """When and where a run trained or a measurement was computed, and with which libraries."""
    return {
        "date": when.strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(device),
        "versions": {
            "d2l_ext": _LIBRARY["d2l_ext"][:12],
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _stateful(pieces) -> dict[str, Any]:
    return {type(p).__qualname__: p for p in pieces if hasattr(p, "state_dict")}


def _record(trainer: Trainer, model: nn.Module, data, key: str, records) -> dict[str, Any]:
    generator = _loader_generator(data)
    return {
        "format": FORMAT,
        "key": key,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": trainer.history,
        "trainer": {
            name: getattr(trainer, name)
            for name in (
                "epoch",
                "train_batch_idx",
                "images_seen",
                "train_seconds",
                "paused_seconds",
            )  # fmt: skip
        },
        "callbacks": {name: cb.state_dict() for name, cb in _stateful(trainer.callbacks).items()},
        "records": [r.state_dict() for r in records],
        "rng": {
            "torch": torch.get_rng_state(),
            "python": _plain_random_state(),
            "loader": generator.get_state() if generator is not None else None,
        },
    }


def _plain_random_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _lacks(entry: dict[str, Any], parts: dict[str, type | tuple[type, ...]]) -> str:
    """The first of ``parts`` that ``entry`` lacks or holds with another type ("" when none)."""
    return next((name for name, kind in parts.items() if not isinstance(entry.get(name), kind)), "")


def _whole(run: dict[str, Any], records) -> str:
    """Why a stored run lacks what a replay reads ("" where it has it all)."""
    if missing := _lacks(run["meta"], {"date": str, "machine": str, "train_seconds": (int, float)}):
        return f"its .json record has no {missing}"
    parts = {"state": dict, "history": list, "trainer": dict, "callbacks": dict, "records": list, "rng": dict}
    if missing := _lacks(run, parts) or _lacks(run["rng"], {"torch": torch.Tensor, "python": list}):
        return f"its body has no {missing} (of a run: state, history, trainer, callbacks, records, rng)"
    if len(run["records"]) != len(records):
        return f"it recorded {len(run['records'])} recorders, this run has {len(records)}"
    return ""


def _fits(state: dict[str, Any], model: nn.Module) -> str:
    """Why weights ``state`` cannot be loaded into ``model`` ("" where they can), before any is."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}
    return "" if want == have else "its weights have other names or shapes than this model's"


class _RandomState(Callback):
    """Puts torch's and the loader's generators where a fresh run's would be when training starts:
    after a bad entry was found, the model was built and initialized already (which draws from
    both), so the loop's own start, which reseeds them, does not draw again."""

    def __init__(self, data):
        self.generator = _loader_generator(data)
        self.states = torch.get_rng_state(), self.generator and self.generator.get_state()

    def before_fit(self, trainer):
        torch.set_rng_state(self.states[0])
        if self.generator is not None:
            self.generator.set_state(self.states[1])


def _replay(trainer: Trainer, model: nn.Module, data, run: dict[str, Any], records) -> None:
    """Put ``trainer``, ``model`` (prepared by the trainer), the recorders and the random generators
    where the stored run left them."""
    model.load_state_dict(run["state"])
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    trainer.history = run["history"]
    for name, value in run["trainer"].items():
        setattr(trainer, name, value)
    trainer.callbacks = [*trainer.default_callbacks(), *trainer.extra_callbacks]
    for name, cb in _stateful(trainer.callbacks).items():
        if name in run["callbacks"]:
            cb.load_state_dict(run["callbacks"][name])
    for recorder, state in zip(records, run["records"], strict=True):
        recorder.load_state_dict(state)
    trainer.run("after_replay")
    torch.set_rng_state(run["rng"]["torch"])
    version, internal, gauss = run["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    generator = _loader_generator(data)
    if generator is not None and run["rng"]["loader"] is not None:
        generator.set_state(run["rng"]["loader"])


# -- measurements of a trained model, stored and replayed --------------------------------------------

MEASUREMENTS = "measurements"  # their folder in the run cache: <cache>/measurements/<name>/<key>.pt


# A tensor's digest while it lives unchanged (its version counter counts in-place changes): a warm
# lecture replays 18 runs of 01 on one data set, and hashing its 55 MB each time cost 0.3 s a run.
_DIGESTS: dict[int, tuple[weakref.ref, int, bytes]] = {}


def _tensor_digest(t: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's dtype, shape and values."""
    known = _DIGESTS.get(id(t))
    if known is not None and known[0]() is t and known[1] == t._version:
        return known[2]
    digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode() + _tensor_bytes(t)).digest()
    key = id(t)
    _DIGESTS[key] = (weakref.ref(t, lambda _: _DIGESTS.pop(key, None)), t._version, digest)
    return digest


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as bytes, whatever its device, dtype or memory layout."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _state_digest(model: nn.Module) -> str:
    """A digest of every value of ``model``'s ``state_dict``: its weights and buffers."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if isinstance(t, nn.parameter.UninitializedTensorMixin):  # a Lazy layer not built yet
            h.update(f"{name} not built\n".encode())
            continue
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def measurement_key(fn, model: nn.Module, loader) -> tuple[str, dict[str, Any]] | None:
    """The key of ``fn(model, loader)`` (hex digest) and what it was computed from, or None for a
    loader that is not a d2l_ext `TensorLoader` (its data could change unseen, so it is not stored).

    The model counts by its structure and the value of every weight and buffer; the loader by its
    settings, the bytes of its images and labels and the state of its generator (the order of its
    batches); the library, ``fn`` and the model's classes by their code, as for `run_key`.
    """
    if type(loader) is not _data.TensorLoader:
        return None
    classes = _classes(model)
    data = hashlib.sha256()
    for t in (loader.images, loader.targets):
        data.update(_tensor_digest(t))
    data.update(_tensor_bytes(loader.generator.get_state()))
    about = {
        "format": FORMAT,
        "measurement": fn.__qualname__,
        "code": code_digest(fn, *classes),
        "library": _LIBRARY,
        "model": repr(model),
        "modules": _module_settings(model),
        "state": _state_digest(model),
        "loader": _plain({k: getattr(loader, k) for k in ("batch_size", "shuffle", "resize", "normalize")}),
        "data": data.hexdigest(),
    }
    return _digest(about), about


def _fits_measurement(entry: dict[str, Any], model: nn.Module) -> str:
    """Why a stored measurement cannot be replayed into ``model`` ("" where it can)."""
    if missing := _lacks(entry["meta"], {"date": str, "seconds": (int, float)}):
        return f"its .json record has no {missing}"
    if missing := _lacks(entry, {"state": dict, "loader": torch.Tensor}):
        return f"its body has no {missing}"
    return _fits(entry["state"], model) if "result" in entry else "its body has no result"


def measure_once(fn, model: nn.Module, loader, *, name: str | None = None, recompute: bool | None = None):
    """``fn(model, loader)``, or the stored result of that same call: for a pass over a data set that
    measures a trained model and may set part of its state (`d2l_ext.measure.exact_bn_statistics`).

    Like `fit` for a training: the first call computes and stores the result, the model's state after
    the pass and the loader's generator state after it; a later call with the same key (see
    `measurement_key`: the same code, weights, buffers and data) puts the model and the loader where
    the computation left them, returns the stored result and prints one line that says so. Any
    changed weight misses and computes. ``recompute=True`` or ``D2L_EXT_RETRAIN=1`` computes afresh
    (and stores the new result); a loader other than a `TensorLoader` always computes.

    The result must be made of tensors, numbers, strings, lists, tuples and dicts (what
    ``torch.load(weights_only=True)`` reads). ``name`` (default: ``fn``'s) names it in the printed
    line and in the cache's folders.
    """
    name = name or fn.__name__
    if not re.fullmatch(r"\w[\w.-]*", name) or ".." in name:
        raise ValueError(
            f"measure_once: name={name!r} must be a plain name (letters, digits, _ . -), no path."
        )
    folder = runs_dir()
    found = None if folder is None else measurement_key(fn, model, loader)
    if found is None:
        return fn(model, loader)
    key, about = found
    cache, where = RunCache(folder), f"{MEASUREMENTS}/{name}"
    recompute = _retrain_from_env() if recompute is None else recompute
    stored = None if recompute else cache.load(where, key, lambda entry: _fits_measurement(entry, model))
    if stored is not None:
        model.load_state_dict(stored["state"])
        loader.generator.set_state(stored["loader"])
        meta = stored["meta"]
        print(
            f"Replayed from the run cache: {name} of this model over {len(loader.targets):,} "
            f"images, computed {meta['date']} on {meta['machine']} in {meta['seconds']:.1f} s. To "
            f"compute it live: recompute=True, or {RETRAIN_ENV}=1 for every run."
        )
        return stored["result"]
    start, when = time.perf_counter(), datetime.datetime.now()
    result = fn(model, loader)
    seconds = time.perf_counter() - start
    entry = {
        "format": FORMAT,
        "key": key,
        "result": result,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "loader": loader.generator.get_state(),
    }
    device = next(iter(model.parameters()), torch.empty(0)).device
    meta = {"key": key, "about": about, **_provenance(when, device), "seconds": seconds}
    cache.store(where, key, entry, meta)
    return result

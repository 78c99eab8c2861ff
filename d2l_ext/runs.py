"""Trained runs, stored and replayed: a lecture never waits twice for the same training.

`fit` trains as ``Trainer(**cfg.trainer).fit(model, data)`` would and stores the run (weights, history,
what the pieces recorded, random states, and what it was) in the run cache, ``$D2L_EXT_RUNS`` or else
``<d2l_ext cache>/runs`` (``off`` turns it off); asked for the same run again, it loads it and prints
one line that says so. A run is found by its key, a digest of what decides its result: the recipe's
settings, the data's settings and tensors, the model's structure and state when training starts, the
extra pieces' settings, and the code: d2l_ext's files byte for byte, d2l's version, and the source and
the plain values read of each class and function of d2l_ext or of a notebook that the model and the
pieces use, so that a notebook's ``#@save`` cell and its copy in d2l_ext give one key. An entry is
written atomically with its SHA-256 beside it; a bad one is reported and retrained, and a store that
fails warns and keeps the trained model. `measure_once` does the same for a long measurement.
"""

from __future__ import annotations

import datetime
import dis
import functools
import hashlib
import inspect
import io
import json
import os
import platform
import random
import re
import sys
import textwrap
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

__all__ = ["RunCacheWarning", "cpu_name", "fit", "machine_name", "measure_once", "runs_dir"]

FORMAT = 3  # the layout of a stored entry; a new layout makes old entries miss
RUNS_ENV, RETRAIN_ENV = "D2L_EXT_RUNS", "D2L_EXT_RETRAIN"
_PLAIN = (bool, int, float, str, type(None))


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
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{RETRAIN_ENV}={value!r}: set it to 1 to retrain every run, or leave it unset.")
    return value in ("1", "true", "yes")


# -- the key: what decides a run's result ---------------------------------------------------------


def _source_digest(folder: Path) -> str:
    """SHA-256 of each ``*.py`` module's relative name and bytes under ``folder`` (not ``.#x.py``)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.py") if p.stem.isidentifier()):
        raw = path.read_bytes()
        h.update(f"{path.relative_to(folder).as_posix()} {len(raw)}\n".encode() + raw)
    return h.hexdigest()


# Read once, at import, next to the code Python loaded from these files; d2l is pinned.
_LIBRARY = {"d2l_ext": _source_digest(Path(__file__).parent), "d2l": d2l.__version__}


def _ours(obj) -> bool:
    """Whether ``obj`` is d2l_ext's code or code of no installed package (a notebook's, a course's
    module's), or a class that holds such a function, itself or in a base (``d2l.add_to_class``)."""
    module = getattr(obj, "__module__", None) or ""
    top, file = module.split(".")[0], getattr(sys.modules.get(module), "__file__", None) or ""
    installed = top in ("d2l", "builtins") or top in sys.stdlib_module_names
    if top == "d2l_ext" or not (installed or {"site-packages", "dist-packages"} & set(Path(file).parts)):
        return True
    return inspect.isclass(obj) and any(_ours(fn) for c in obj.__mro__ for fn in _functions(c).values())


def _functions(cls) -> dict[str, Any]:
    """A class's own functions by name (static, class and property ones too)."""
    found = {k: getattr(v, "__func__", getattr(v, "fget", v)) for k, v in vars(cls).items()}
    return {k: fn for k, fn in found.items() if inspect.isfunction(fn)}


@functools.cache  # a function's code never changes, its file may: the source read first stays
def _source(fn) -> str:
    """``fn``'s source as tools/export.py copies a ``#@save`` cell into d2l_ext: without the save
    marks and the ``add_to_class`` decorator, ``super()`` for ``super(C, self)`` (C is read)."""
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # no source (made by exec): its bytecode
        return _bytecode(fn.__code__)
    text = re.sub(r"^@.*\badd_to_class\(.*\n", "", text, flags=re.M)
    text = re.sub(r"[ \t]*#[ \t]*@save[ \t]*$", "", text, flags=re.M).rstrip()  # a cell ends without \n
    return re.sub(r"\bsuper\(\s*\w+\s*,\s*\w+\s*\)", "super()", text)


def _bytecode(code) -> str:
    consts = (  # a frozenset's order follows string hashing, which varies per process
        _bytecode(c) if inspect.iscode(c) else sorted(map(repr, c)) if isinstance(c, frozenset) else c
        for c in code.co_consts
    )
    return repr((code.co_code, code.co_names, *consts))


def _reads(fn) -> dict[str, Any]:
    """The globals (builtins aside) and closure variables that ``fn`` reads, with their values now."""
    codes, names = [fn.__code__], set()
    while codes:
        code = codes.pop()
        names |= {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
        codes += [c for c in code.co_consts if inspect.iscode(c)]
    read = {name: fn.__globals__[name] for name in names if name in fn.__globals__}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:  # super()'s cell __class__ holds the class that super(C, self) reads as a global
            read[cell.cell_contents.__name__ if name == "__class__" else name] = cell.cell_contents
        except ValueError:  # an empty cell: a variable not assigned yet
            pass
    return read


def _code_digest(*objects) -> str:
    """A digest of ``objects`` (classes, functions) and of what they read, in turn: a function of
    `_ours` by its `_source`, a class of `_ours` by its name and plain attributes, its bases and its
    functions, another class or function by its name, a plain value or tensor by its value. It
    depends on the code alone, not on where it lives: a notebook's cell and its copy in d2l_ext
    give one digest."""
    seen: dict[int, int] = {}
    parts: list[str] = []

    def walk(name: str, obj) -> None:
        if isinstance(obj, (*_PLAIN, torch.Tensor)):  # e.g. a notebook's SCALE = 2 read in forward
            parts.append(f"{name} = {_tensor_digest(obj).hex() if isinstance(obj, torch.Tensor) else obj!r}")
        elif not (inspect.isclass(obj) or inspect.isfunction(obj)):
            return  # a module or an instance
        elif not _ours(obj):
            parts.append(f"{name} = {obj.__module__}.{obj.__qualname__}")
        elif id(obj) in seen:  # read again, or by itself (super(C, self))
            parts.append(f"{name} = definition {seen[id(obj)]}")
        else:
            seen[id(obj)] = len(seen)
            if inspect.isfunction(obj):
                parts.append(f"{name} = {_source(obj)}")
                reads = _reads(obj)
            else:
                parts.append(f"{name} = class {obj.__name__} {_attributes(obj)}")
                reads = {f"base {i}": base for i, base in enumerate(obj.__bases__)} | _functions(obj)
            for key in sorted(reads):
                walk(key, reads[key])

    for obj in objects:
        walk("", obj)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _attributes(obj) -> dict[str, Any]:
    """``obj``'s plain public attributes (numbers, strings, flags, tuples of them)."""
    return {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and _plain(v)}


def _plain(value) -> bool:
    return isinstance(value, _PLAIN) or isinstance(value, tuple) and all(map(_plain, value))


def _key(model: nn.Module, code: Sequence[object], **about) -> tuple[str, dict[str, Any]]:
    """The key (hex digest) of a run or measurement of ``model`` and what it was computed from:
    ``about`` and the model's structure, its submodules' plain attributes (which ``repr`` need not
    show), its hyperparameters and weights, and the code of ``code`` and of the model's classes."""
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__)
    about |= {
        "format": FORMAT,
        "library": _LIBRARY,
        "code": _code_digest(*code, *classes),
        "model": repr(model),
        "modules": {name or "(model)": _attributes(m) for name, m in model.named_modules()},
        "hparams": getattr(model, "hparams", {}),
        "start": _state_digest(model),
    }
    return hashlib.sha256(json.dumps(about, sort_keys=True, default=repr).encode()).hexdigest()[:32], about


# A tensor's digest while it lives unchanged (its version counter counts in-place changes): a warm
# lecture replays 18 runs of 01 on one data set, and hashing its 55 MB each time cost 0.3 s a run.
_DIGESTS: dict[int, tuple[weakref.ref, int, bytes]] = {}


def _tensor_digest(t: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's dtype, shape and values, whatever its device or memory layout."""
    known = _DIGESTS.get(id(t))
    if known is not None and known[0]() is t and known[1] == t._version:
        return known[2]
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode() + raw).digest()
    key = id(t)
    _DIGESTS[key] = (weakref.ref(t, lambda _: _DIGESTS.pop(key, None)), t._version, digest)
    return digest


def _state_digest(model: nn.Module) -> str:
    """A digest of ``model``'s weights and buffers (a Lazy layer not built yet counts as such)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        lazy = isinstance(t, nn.parameter.UninitializedTensorMixin)
        h.update(name.encode() + (b" not built" if lazy else _tensor_digest(t)))
    return h.hexdigest()


def _data_digest(data) -> str | None:
    """A digest of the tensors that ``data`` holds (its attributes, and theirs, three levels down: a
    data set's images and labels), or None when it holds none (its data could change unseen)."""
    found, seen, todo = [], set(), [(data, 3)]
    while todo:
        value, depth = todo.pop()
        if id(value) in seen or isinstance(value, nn.Module):
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append(_tensor_digest(value))
        elif depth and isinstance(value, list | tuple):
            todo += [(item, depth - 1) for item in value]
        elif depth and hasattr(value, "__dict__"):
            todo += [(item, depth - 1) for _, item in sorted(vars(value).items())]
    return hashlib.sha256(b"".join(found)).hexdigest() if found else None


# -- entries on disk: <cache>/<experiment>/<preset>/<key>.pt (a run) or <cache>/measurements/<name>/
# <key>.pt, and beside it <key>.json, written last: what the entry is and the .pt file's SHA-256 -----


def _load(root: Path, pt: Path, key: str, parts: dict, model: nn.Module, records: int = 0) -> dict | None:
    """The entry at ``pt``, its record's and its body's fields in one dict; None where there is none
    or where it is bad, which is reported: outside the cache, partial, unreadable, corrupt, another
    key, a part of ``parts`` missing, weights that do not fit ``model`` or the states of another
    number of recorders than ``records``."""
    record = pt.with_suffix(".json")
    if not pt.resolve().is_relative_to(root.resolve()):
        return _bad(pt, f"outside the run cache {root} (a link?)")
    if not record.exists():  # the record is written last: without it, the writer was interrupted
        return _bad(pt, "partial: its .json record is missing") if pt.exists() else None
    try:
        meta, raw = json.loads(record.read_text()), pt.read_bytes()
    except (OSError, ValueError) as e:
        return _bad(pt, f"unreadable: {e}")
    if not isinstance(meta, dict) or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        return _bad(pt, "corrupt: its bytes do not match the SHA-256 in its .json record")
    try:
        body = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means: do not use it
        return _bad(pt, f"unloadable: {type(e).__name__}: {e}")
    entry = {**meta, **body} if isinstance(body, dict) else {}
    if entry.get("key") != key or entry.get("format") != FORMAT:
        return _bad(pt, "not this run (another key or format)")
    parts = {"date": str, "machine": str, "seconds": (int, float), "state": dict, **parts}
    if missing := [n for n, kind in parts.items() if n not in entry or not isinstance(entry[n], kind)]:
        return _bad(pt, f"not usable: it has no {missing[0]}")
    have = {k: getattr(v, "shape", None) for k, v in entry["state"].items()}
    if have != {k: v.shape for k, v in model.state_dict().items()}:
        return _bad(pt, "not usable: its weights have other names or shapes than this model's")
    if len(entry.get("records", ())) != records:
        return _bad(pt, f"not usable: it holds {len(entry['records'])} recorders' states, not {records}")
    return entry


def _bad(pt: Path, why: str) -> None:
    message = f"Run cache entry {pt} is {why}. It is not used: it is computed again and replaced."
    warnings.warn(message, RunCacheWarning, stacklevel=4)  # at the caller of fit or measure_once


def _store(root: Path, pt: Path, key: str, about: dict, when, model: nn.Module, body: dict, seconds=None):
    """Write an entry begun at datetime ``when``: the model's weights and ``body``, and its record
    (``seconds``: of training, else since ``when``); on any error (a read-only or full disk, a
    file-size limit, a link out of the cache) warn: the model is in memory either way."""
    wall = (datetime.datetime.now() - when).total_seconds()
    device = next(iter(model.parameters()), torch.empty(0)).device
    machine = f"{machine_name()}, {torch.get_num_threads()} torch threads"
    meta = {
        "key": key,
        "about": about,
        "date": when.strftime("%Y-%m-%d %H:%M"),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else machine,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "seconds": wall if seconds is None else seconds,
        "wall_seconds": wall,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    body = {"format": FORMAT, "key": key, "state": state, **body}
    try:
        if not pt.resolve().is_relative_to(root.resolve()):
            raise OSError(f"{pt.parent} leads outside the cache (a link?)")
        pt.parent.mkdir(parents=True, exist_ok=True)
        _data.write_atomic(pt, lambda f: torch.save(body, f))
        with open(pt, "rb") as f:
            meta["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
        record = json.dumps(meta, indent=1, sort_keys=True, default=repr).encode()
        _data.write_atomic(pt.with_suffix(".json"), lambda f: f.write(record))
    except Exception as e:  # noqa: BLE001 - torch.save raises RuntimeError for a full disk
        message = (
            f"The run could not be stored in the run cache {root} ({e}); it will train again next "
            f"time. Set {RUNS_ENV} to a writable folder, or {RUNS_ENV}=off."
        )
        warnings.warn(message, RunCacheWarning, stacklevel=3)  # at the caller of fit or measure_once


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    fallback = platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), fallback)


def machine_name() -> str:
    """The CPU's name and its number of cores, e.g. ``AMD EPYC, 2 cores``: where a record was made."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


# -- training or replaying ------------------------------------------------------------------------

# The parts of a stored run and of a stored measurement, besides the weights; the trainer's progress.
_RUN = dict(trainer=dict, callbacks=dict, records=list, torch_rng=torch.Tensor, python_rng=tuple)
_MEASUREMENT = dict(loader_rng=torch.Tensor, result=object)
_PROGRESS = ("history", "epoch", "train_batch_idx", "images_seen", "train_seconds")


class _StartFrom(Callback):
    """Puts torch's and the loader's generators where they were after `fit` built and initialized
    the model to check a stored run that turned out bad: the loop prepares the model again,
    reseeding the generators but not drawing the initialization again."""

    def __init__(self, generator: torch.Generator | None):
        self.generator, self.states = generator, (torch.get_rng_state(), generator and generator.get_state())

    def before_fit(self, trainer):
        torch.set_rng_state(self.states[0])
        if self.generator is not None:
            self.generator.set_state(self.states[1])


def fit(cfg, model: nn.Module, data, *, callbacks=(), records=(), retrain: bool | None = None, **settings):
    """Train ``model`` on ``data`` under experiment ``cfg`` (`experiment(name)`), or replay the stored
    run: the trainer. ``settings`` override ``cfg.trainer`` (e.g. ``plot=False``); ``callbacks`` are
    more `Callback` pieces and ``records`` other recorders (e.g. an `ActivationRecorder`), those with
    ``state_dict`` stored with the run and restored on replay; ``retrain`` trains even if the run is
    stored (default: ``$D2L_EXT_RETRAIN``). A model that trained already trains on, a run of its own.
    """
    if not all(hasattr(cfg, a) for a in ("name", "preset", "trainer")):  # not an `Experiment`
        raise TypeError(f"fit takes the experiment first, cfg = experiment('resnet'); got {cfg!r}.")
    if retrain and getattr(model, "_d2l_ext_trained", False):
        raise ValueError(
            "This model holds the weights of a finished run, so retrain=True would continue from "
            "them instead of training afresh: make the model anew (e.g. model = ResNet(**cfg.model)), "
            "then fit(cfg, model, data, retrain=True)."
        )
    settings, pieces = {**cfg.trainer, **settings}, [*callbacks, *records]
    trainer = Trainer(**settings, callbacks=callbacks)
    retrain = _retrain_from_env() if retrain is None else retrain
    root = runs_dir()
    if root is None or (content := _data_digest(data)) is None:  # no cache, or data it cannot read
        trainer.fit(model, data)
        model._d2l_ext_trained = True
        return trainer
    key, about = _key(
        model,
        [type(p) for p in pieces],
        experiment=cfg.name,
        preset=cfg.preset,
        trainer={k: v for k, v in settings.items() if k not in ("plot", "num_gpus")},  # not in the result
        data=[type(data).__qualname__, getattr(data, "hparams", {}), content],
        pieces=[[type(p).__qualname__, _attributes(p)] for p in pieces],
    )
    pt = root / cfg.name / cfg.preset / f"{key}.pt"
    run = None
    if not retrain and pt.exists():  # built and initialized as a training starts, to check its weights
        trainer.prepare_data(data)
        trainer.prepare_model(model)
        start = _StartFrom(getattr(trainer.train_dataloader, "generator", None))
        if (run := _load(root, pt, key, _RUN, model, len(records))) is None:
            trainer.extra_callbacks.insert(0, start)
    if run is None:
        when = datetime.datetime.now()
        trainer.fit(model, data)
        generator = getattr(trainer.train_dataloader, "generator", None)
        body = {
            "trainer": {name: getattr(trainer, name) for name in _PROGRESS},
            "callbacks": {
                type(cb).__qualname__: cb.state_dict()
                for cb in trainer.callbacks
                if hasattr(cb, "state_dict")
            },
            "records": [r.state_dict() for r in records],
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "loader_rng": generator and generator.get_state(),
        }
        _store(root, pt, key, about, when, model, body, trainer.train_seconds)
    else:
        generator = getattr(trainer.train_dataloader, "generator", None)
        model.load_state_dict(run["state"])
        for name, value in run["trainer"].items():
            setattr(trainer, name, value)
        trainer.callbacks = [*trainer.default_callbacks(), *trainer.extra_callbacks]
        for cb in trainer.callbacks:
            if hasattr(cb, "load_state_dict") and type(cb).__qualname__ in run["callbacks"]:
                cb.load_state_dict(run["callbacks"][type(cb).__qualname__])
        for recorder, state in zip(records, run["records"], strict=True):
            recorder.load_state_dict(state)
        trainer.run("after_replay")
        torch.set_rng_state(run["torch_rng"])
        random.setstate(run["python_rng"])
        if generator is not None and run.get("loader_rng") is not None:
            generator.set_state(run["loader_rng"])
        print(
            f"Replayed from the run cache: {cfg.name!r} ({cfg.preset} preset), trained "
            f"{run['date']} on {run['machine']}, {run['seconds']:.0f} s of training. "
            f"To train it live: make the model anew and fit(..., retrain=True), or {RETRAIN_ENV}=1 "
            "for every run."
        )
    model._d2l_ext_trained = True
    return trainer


def measure_once(fn, model: nn.Module, loader, *, name: str | None = None, recompute: bool | None = None):
    """``fn(model, loader)``, or the stored result of that same call, as `fit` for a run: for a pass
    that measures a trained model and may set part of its state (`exact_bn_statistics`). Keyed by
    ``fn``'s code, the model and the loader (settings, images, labels and its generator's state, the
    order of the batches); a replay leaves the model and the generator as the pass did. ``recompute``
    as `fit`'s ``retrain``; a loader other than a `TensorLoader` always computes. ``name`` (default:
    ``fn``'s) names the result, which holds what ``torch.load(weights_only=True)`` reads."""
    name = name or fn.__name__
    if not re.fullmatch(r"\w[\w.-]*", name) or ".." in name:
        raise ValueError(
            f"measure_once: name={name!r} must be a plain name (letters, digits, _ . -), no path."
        )
    root = runs_dir()
    if root is None or type(loader) is not _data.TensorLoader:
        return fn(model, loader)
    order = _tensor_digest(loader.generator.get_state()).hex()  # the order of the batches
    key, about = _key(
        model, [fn], measurement=fn.__qualname__, loader=[_attributes(loader), _data_digest(loader), order]
    )
    pt = root / "measurements" / name / f"{key}.pt"
    recompute = _retrain_from_env() if recompute is None else recompute
    stored = None if recompute else _load(root, pt, key, _MEASUREMENT, model)
    if stored is not None:
        model.load_state_dict(stored["state"])
        loader.generator.set_state(stored["loader_rng"])
        print(
            f"Replayed from the run cache: {name} of this model over {len(loader.targets):,} "
            f"images, computed {stored['date']} on {stored['machine']} in {stored['seconds']:.1f} s. "
            f"To compute it live: recompute=True, or {RETRAIN_ENV}=1 for every run."
        )
        return stored["result"]
    when = datetime.datetime.now()
    result = fn(model, loader)
    _store(root, pt, key, about, when, model, {"result": result, "loader_rng": loader.generator.get_state()})
    return result

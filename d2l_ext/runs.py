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
from pathlib import Path

import d2l
import torch
from torch import nn

from d2l_ext import data as _data
from d2l_ext.training import Callback, Trainer

__all__ = ["RunCacheWarning", "cpu_name", "fit", "machine_name", "measure_once", "runs_dir"]

FORMAT = 4  # the layout of a stored entry; a new layout makes old entries miss
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
    """Whether ``obj`` is code of d2l_ext or of no installed package (a notebook's, a course's)."""
    module = getattr(obj, "__module__", None) or ""
    top, file = module.split(".")[0], getattr(sys.modules.get(module), "__file__", None) or ""
    installed = top in ("d2l", "builtins") or top in sys.stdlib_module_names
    return top == "d2l_ext" or not (installed or {"site-packages", "dist-packages"} & set(Path(file).parts))


@functools.cache  # a function's code never changes, its file may: the source read first stays
def _source(fn) -> str:
    """``fn``'s source as tools/export.py copies a ``#@save`` cell into d2l_ext (no save marks, no
    ``add_to_class`` decorator, ``super()`` for ``super(C, self)``); without source, its bytecode."""
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # made by exec
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


def _reads(fn) -> dict:
    """The globals and closure variables that ``fn`` reads, with their values now."""
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
    """A digest of ``objects`` and, in turn, of what they read: a function of `_ours` by its
    `_source`, another by its name; a class by its name, bases and the functions of ours it holds
    (``d2l.add_to_class`` puts them into any class), one of ours also by its plain attributes; a
    plain value or tensor by its value. A notebook's cell and its copy in d2l_ext give one digest."""
    seen: dict[int, int] = {}
    parts: list[str] = []

    def walk(name: str, obj) -> None:
        if isinstance(obj, torch.Tensor):  # e.g. a notebook's SCALE = 2 read in forward
            parts.append(f"{name} = {_tensor_digest(obj).hex()}")
        elif isinstance(obj, _PLAIN):
            parts.append(f"{name} = {obj!r}")
        elif not (inspect.isclass(obj) or inspect.isfunction(obj)):
            return  # a module or an instance
        elif id(obj) in seen:  # read again, or by itself (super(C, self))
            parts.append(f"{name} = definition {seen[id(obj)]}")
        elif not _ours(obj) and inspect.isfunction(obj):
            parts.append(f"{name} = {obj.__module__}.{obj.__qualname__}")
        else:
            seen[id(obj)] = len(seen)
            if inspect.isfunction(obj):
                parts.append(f"{name} = {_source(obj)}")
                reads = _reads(obj)
            else:  # a package's class counts by its name, and by the functions of ours put into it
                ours = _ours(obj)
                parts.append(f"{name} = class {obj.__name__} {_attributes(obj) if ours else obj.__module__}")
                found = {k: getattr(v, "__func__", getattr(v, "fget", v)) for k, v in vars(obj).items()}
                reads = {k: fn for k, fn in found.items() if inspect.isfunction(fn) and (ours or _ours(fn))}
                reads |= {f"base {i}": base for i, base in enumerate(obj.__bases__)}
            for key in sorted(reads):
                walk(key, reads[key])

    for obj in objects:
        walk("", obj)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _attributes(obj) -> dict:
    """``obj``'s plain public attributes (numbers, strings, flags, tuples of them)."""
    return {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and _plain(v)}


def _plain(value) -> bool:
    return isinstance(value, _PLAIN) or isinstance(value, tuple) and all(map(_plain, value))


def _key(model: nn.Module, code, **about) -> tuple[str, dict]:
    """The key of a run or measurement of ``model`` and what it is computed from: ``about``, the model's
    structure, plain attributes (which ``repr`` need not show), hyperparameters, weights and code."""
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__)
    lazy = nn.parameter.UninitializedTensorMixin  # a Lazy layer not built yet
    state = [
        (k, "not built" if isinstance(t, lazy) else _tensor_digest(t)) for k, t in model.state_dict().items()
    ]
    about |= {
        "format": FORMAT,
        "library": _LIBRARY,
        "code": _code_digest(*code, *classes),
        "model": repr(model),
        "modules": {name or "(model)": _attributes(m) for name, m in model.named_modules()},
        "hparams": getattr(model, "hparams", {}),
        "start": hashlib.sha256(repr(state).encode()).hexdigest(),
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


# -- entries: <cache>/<experiment>/<preset>/<key>.pt or <cache>/measurements/<name>/<key>.pt, and
# beside it <key>.json, written last: what the entry is and the .pt file's SHA-256 ----------------


def _entry(root: Path, *names: str) -> Path | None:
    """The entry ``root/names...``, or None where a link leads out of the cache (reported)."""
    pt = root.joinpath(*names)
    if pt.resolve().is_relative_to(root.resolve()):
        return pt
    return _bad(pt, f"outside the run cache {root} (a link?)", stacklevel=3)


def _load(pt: Path, key: str, parts: dict, model: nn.Module, records: int = 0) -> dict | None:
    """The entry at ``pt``, its record and body in one dict; None where there is none or a bad one."""
    record = pt.with_suffix(".json")
    if not record.exists():  # the record is written last: without it, the writer was interrupted
        return _bad(pt, "partial: its .json record is missing") if pt.exists() else None
    try:
        meta, raw = json.loads(record.read_text()), pt.read_bytes()
        if not isinstance(meta, dict) or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            return _bad(pt, "corrupt: its bytes do not match the SHA-256 in its .json record")
        body = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read or unpickle means: do not use it
        return _bad(pt, f"unreadable: {type(e).__name__}: {e}")
    entry = {**meta, **body} if isinstance(body, dict) else {}
    parts = {"key": str, "date": str, "machine": str, "seconds": (int, float), "state": dict, **parts}
    if missing := [n for n, kind in parts.items() if n not in entry or not isinstance(entry[n], kind)]:
        return _bad(pt, f"not usable: it has no {missing[0]}")
    have = {k: getattr(v, "shape", None) for k, v in entry["state"].items()}
    want = {k: v.shape for k, v in model.state_dict().items()}
    if entry["key"] != key or have != want or len(entry.get("records", ())) != records:
        return _bad(pt, "not this run's: another key, weights of other names or shapes, or other recorders")
    return entry


def _bad(pt: Path, why: str, stacklevel: int = 4) -> None:
    message = f"Run cache entry {pt} is {why}. It is not used: it is computed again and replaced."
    warnings.warn(message, RunCacheWarning, stacklevel=stacklevel)  # at the caller of fit or measure_once


def _store(pt: Path, key: str, about: dict, when, model: nn.Module, body: dict, seconds=None) -> None:
    """Write an entry begun at datetime ``when``, and its record (``seconds``: of training, else since
    ``when``); on any error warn: the model is in memory either way."""
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
    body |= {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    try:
        pt.parent.mkdir(parents=True, exist_ok=True)
        _data.write_atomic(pt, lambda f: torch.save(body, f))
        meta["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
        record = json.dumps(meta, indent=1, sort_keys=True, default=repr).encode()
        _data.write_atomic(pt.with_suffix(".json"), lambda f: f.write(record))
    except Exception as e:  # noqa: BLE001 - torch.save raises RuntimeError for a full disk
        message = (
            f"The run could not be stored in the run cache ({e}); it will train again next time. "
            f"Set {RUNS_ENV} to a writable folder, or {RUNS_ENV}=off."
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
    """Sets torch's and the loader's generators where the first preparation of the model (to check a
    stored run that was bad) left them: the loop prepares it again but draws no initialization."""

    def __init__(self, loader):
        self.generator = getattr(loader, "generator", None)
        self.states = torch.get_rng_state(), self.generator and self.generator.get_state()

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
    pt = run = None
    if root and (content := _data_digest(data)):  # else no cache, or data whose content it cannot read
        key, about = _key(
            model,
            [type(p) for p in pieces],
            experiment=cfg.name,
            preset=cfg.preset,
            trainer={k: v for k, v in settings.items() if k not in ("plot", "num_gpus")},  # not in the result
            data=[type(data).__qualname__, getattr(data, "hparams", {}), content],
            pieces=[[type(p).__qualname__, _attributes(p)] for p in pieces],
        )
        pt = _entry(root, cfg.name, cfg.preset, f"{key}.pt")
    if pt and not retrain and pt.exists():  # built and initialized as a training starts, to check it
        trainer.prepare_data(data)
        trainer.prepare_model(model)
        start = _StartFrom(trainer.train_dataloader)
        if (run := _load(pt, key, _RUN, model, len(records))) is None:
            trainer.extra_callbacks.insert(0, start)
    if run is None:
        when = datetime.datetime.now()
        trainer.fit(model, data)
        generator = getattr(trainer.train_dataloader, "generator", None)
        stateful = [c for c in trainer.callbacks if hasattr(c, "state_dict")]
        body = {
            "trainer": {name: getattr(trainer, name) for name in _PROGRESS},
            "callbacks": {type(c).__qualname__: c.state_dict() for c in stateful},
            "records": [r.state_dict() for r in records],
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "loader_rng": generator and generator.get_state(),
        }
        if pt:
            _store(pt, key, about, when, model, body, trainer.train_seconds)
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
            f"Replayed from the run cache: {cfg.name!r} ({cfg.preset} preset), trained {run['date']} "
            f"on {run['machine']}, {run['seconds']:.0f} s of training. To train it live: make the "
            f"model anew and fit(..., retrain=True), or {RETRAIN_ENV}=1 for every run."
        )
    model._d2l_ext_trained = True
    return trainer


def measure_once(fn, model: nn.Module, loader, *, name: str | None = None, recompute: bool | None = None):
    """``fn(model, loader)``, or the stored result of that same call, as `fit` for a run: for a pass
    that measures a trained model and may set its state (`exact_bn_statistics`), keyed also by the
    loader's images and order of batches; only a `TensorLoader`'s result is stored, under ``name``
    (default: ``fn``'s), as what ``torch.load(weights_only=True)`` reads. ``recompute`` as ``retrain``."""
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
    pt = _entry(root, "measurements", name, f"{key}.pt")
    recompute = _retrain_from_env() if recompute is None else recompute
    stored = None if recompute or not pt else _load(pt, key, _MEASUREMENT, model)
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
    if pt:
        _store(pt, key, about, when, model, {"result": result, "loader_rng": loader.generator.get_state()})
    return result

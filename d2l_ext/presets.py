"""Run presets: one knob, ``D2L_EXT_PRESET``, and the recipe of every training in the notebooks.

* ``ci``   a fixed, class-balanced 10,000-image training subset and 1,000 test images, a fixed
           number of steps (the result does not depend on the machine's speed): for the tests.
* ``demo`` a live lecture on a laptop CPU: the full data set, at most a minute per model, shaped for
           the machine (28x28 input, a stem for small images, narrow stages, a one-cycle schedule).
* ``full`` the book's settings (resolution, epochs, learning rate); meant for a GPU.

The default is ``full`` where CUDA has a GPU and ``demo`` elsewhere. ``cfg = experiment("resnet")``
prints the recipe's settings under the preset in force; the notebook builds
``FashionMNIST(**cfg.data)``, the model from ``cfg.model`` and ``Trainer(**cfg.trainer)``, and
asserts ``val_acc >= cfg.floor``.
"""

import difflib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from d2l_ext.data import FashionMNIST
from d2l_ext.training import Trainer

__all__ = ["EXPERIMENTS", "PRESETS", "Experiment", "Recipe", "current_preset", "experiment", "floors_table"]

PRESETS = ("ci", "demo", "full")
MAPPINGS = ("data", "model", "trainer", "extra")


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {problem}.")


def current_preset() -> str:
    """The preset in force: ``$D2L_EXT_PRESET``, else ``full`` with a CUDA GPU and ``demo`` without."""
    given = os.environ.get("D2L_EXT_PRESET", "")
    name = given.strip().lower() or ("full" if torch.cuda.is_available() else "demo")
    if name not in PRESETS:
        raise ValueError(
            f"D2L_EXT_PRESET={given!r} is not a preset; use one of {', '.join(PRESETS)}, "
            "or unset it for the default (full with a CUDA GPU, demo without)."
        )
    return name


@dataclass(frozen=True)
class Experiment:
    """One training under one preset: what to build and train, how long it takes, and the accuracy
    it must reach."""

    data: Mapping[str, Any]  # FashionMNIST(**data)
    model: Mapping[str, Any]  # keyword arguments of the recipe's model classes
    trainer: Mapping[str, Any]  # Trainer(**trainer)
    seconds: float  # expected wall time of the training cell (2-core CPU; GPU for ``full``)
    about: str = ""  # what is scaled relative to the book, and why
    extra: Mapping[str, Any] = field(default_factory=dict)  # experiment-specific knobs
    # The validation accuracy every run must reach (None: no floor). A timed (demo) run sees fewer
    # images on a slower machine, so its floor is what a machine ten times slower reaches in the
    # same budget: the verdict must not depend on the machine's speed.
    floor: float | None = None
    target: float | None = None  # the accuracy expected on a quiet machine (the benchmark's)
    name: str = ""  # filled in by its `Recipe`
    preset: str = ""

    def __str__(self) -> str:
        def fmt(settings: Mapping[str, Any]) -> str:
            return ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "-"

        where = "a GPU" if self.preset == "full" else "a 2-core CPU"
        accuracy = []
        if self.floor is not None:
            accuracy.append(f"at least {100 * self.floor:g}% on every run (cfg.floor, asserted)")
        if self.target is not None:
            accuracy.append(f"about {100 * self.target:g}% on a quiet machine (cfg.target)")
        lines = [
            f"Experiment {self.name!r} under preset {self.preset!r} "
            f"(set D2L_EXT_PRESET to one of {', '.join(PRESETS)} to change it)",
            f"  data:     {fmt(self.data)}",
            f"  model:    {fmt(self.model)}",
            f"  trainer:  {fmt(self.trainer)}",
            f"  also:     {fmt(self.extra)}" if self.extra else "",
            f"  expected: about {self.seconds:.0f} s on {where}",
            f"  accuracy: validation {'; '.join(accuracy)}" if accuracy else "",
            f"  why:      {self.about}" if self.about else "",
        ]
        return "\n".join(filter(None, lines))


@dataclass(frozen=True)
class Recipe:
    """An experiment of the notebooks: the dotted paths of the model classes that ``model``
    configures (the benchmark trains the first) and its `Experiment` under each preset,
    ``recipe[preset]``, checked when this module loads, named and read-only."""

    name: str
    models: tuple[str, ...]
    ci: Experiment
    demo: Experiment
    full: Experiment

    def __post_init__(self) -> None:
        for preset in PRESETS:
            s, where = getattr(self, preset), f"experiment {self.name!r}, preset {preset!r}"
            for what, fn in (("data", FashionMNIST), ("trainer", Trainer)):
                known = list(inspect.signature(fn).parameters)
                for name in (n for n in getattr(s, what) if n not in known):
                    raise TypeError(
                        f"{where}: {what} setting {name!r} is not an argument of {fn.__name__}; "
                        f"{_hint(name, known)}it takes {', '.join(known)}."
                    )
            _check(s.seconds > 0, where, f"the expected seconds must be positive, got {s.seconds!r}")
            for kind, x in (("floor", s.floor), ("target", s.target)):
                _check(x is None or 0 < x < 1, where, f"{kind} is an accuracy in (0, 1), got {x!r}")
            below = None not in (s.floor, s.target) and s.target < s.floor
            _check(not below, where, f"the target {s.target} is below the floor {s.floor}")
            read_only = {k: MappingProxyType(dict(getattr(s, k))) for k in MAPPINGS}
            object.__setattr__(self, preset, replace(s, name=self.name, preset=preset, **read_only))

    def __getitem__(self, preset: str) -> Experiment:
        if preset not in PRESETS:
            raise KeyError(f"{preset!r} is not a preset; use one of {', '.join(PRESETS)}.")
        return getattr(self, preset)


# Settings shared by many experiments.
_BOOK_DATA = dict(batch_size=128)  # the book's minibatch
_NORMALIZED = dict(batch_size=128, normalize=True)  # standardized inputs, for BN's comparisons
_CI_DATA = dict(train_subset=10_000, val_subset=1_000)  # fixed, class-balanced subsets
_CI_NORMALIZED = dict(_NORMALIZED, **_CI_DATA)
_CI_64 = dict(_CI_NORMALIZED, batch_size=64)
_LR = dict(lr=0.1)
_WHY_CI = "a 10,000-image training subset and a fixed step count, so CI takes seconds"
# The recipe that shapes a run for a small CPU (../PERFORMANCE study): SGD with Nesterov momentum
# under a one-cycle schedule, weight decay, label smoothing, channels-last.
_SGD = dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4)
_FAST = dict(_SGD, schedule="onecycle", label_smoothing=0.1, channels_last=True)
# A timed demo evaluates once, at the end: evaluating 10,000 images every epoch would eat the minute.
_TIMED = dict(max_epochs=1000, time_budget=60, eval_every=0)
_DEMO = dict(_FAST, **_TIMED)
_BOOK = dict(max_epochs=10, channels_last=True, amp=True)  # the book's ten epochs, plus GPU speed-ups


def _steps(n: int, **changes: Any) -> dict[str, Any]:
    """The fast recipe for ``n`` steps, however fast the machine."""
    return {**_FAST, "max_epochs": 100, "max_steps": n, **changes}


def _ci(demo: Experiment, steps: int, seconds: float, **changes: Any) -> Experiment:
    """The ci run of a demo that runs a fixed number of steps: on the CI subsets, ``steps`` steps."""
    data, trainer = {**demo.data, **_CI_DATA}, {**demo.trainer, "max_steps": steps}
    return replace(demo, **{"about": _WHY_CI, **changes}, data=data, trainer=trainer, seconds=seconds)


# 01_batch_norm's short like-for-like runs under BN-LeNet's recipe for a fixed number of steps:
# LeNet against BN-LeNet (drift); BN before or after the activation, two seeds each, so that the gap
# can be set against the spread between seeds (placement); BN-LeNet after 20 steps of the book's
# plain SGD, its running estimates still lagging (early); BN statistics over ghost batches of each
# size in extra["sizes"], the SGD minibatch the same, on a training set small enough to overfit in
# 40 epochs (the design, not a shortcut: even the demo keeps it).
_DRIFT = Experiment(_NORMALIZED, _LR, _steps(300, eval_every=0), 18, "300 steps for both")
_PLACEMENT = replace(_DRIFT, seconds=30, extra=dict(seeds=(0, 1)), floor=0.5, about="300 steps, two seeds")
_WHY_EARLY = "20 steps, then one pass over the training set per BN layer"
_EARLY = Experiment(_NORMALIZED, _LR, dict(max_epochs=1, max_steps=20, eval_every=0), 15, _WHY_EARLY)
_GHOST = Experiment(_NORMALIZED, _LR, _steps(200, max_epochs=1000, eval_every=0), 60, "200 steps per size")
# 02-04: the demo's networks, for native 28x28 input (the book resizes to 96x96): a 3x3 stride-1
# stem (7x7 stride 2 is meant for 224-pixel images) and narrow stages. Each model carries its
# preset's learning rate.
_SMALL_STEM, _BOOK_STEM = dict(stem_kernel=3, stem_stride=1), dict(stem_kernel=7, stem_stride=2)
_SMALL_RESNET = dict(arch=((1, 16), (1, 32), (1, 64), (1, 128)), lr=0.2, **_SMALL_STEM)
_RESNET18 = dict(arch=((2, 64), (2, 128), (2, 256), (2, 512)), lr=0.01, **_BOOK_STEM)
_SMALL_RESNEXT = _SMALL_RESNET | dict(groups=8, bot_mul=1)
_RESNEXT = _RESNET18 | dict(groups=32, bot_mul=0.5, lr=0.05)
_SMALL_DENSENET = dict(num_channels=32, growth_rate=16, arch=(2, 2, 2, 2), lr=0.1, **_SMALL_STEM)
_DENSENET = dict(num_channels=64, growth_rate=32, arch=(4, 4, 4, 4), lr=0.01, **_BOOK_STEM)
_BIG_BATCH = dict(_NORMALIZED, batch_size=256)
_BOOK_96 = dict(_BOOK_DATA, resize=96)  # the book's resolution
_WHY_SMALL = (
    "native 28x28 input instead of 96x96 (9x fewer pixels); a 3x3 stride-1 stem; one block per stage "
    "with widths 16-32-64-128, so that more epochs fit in the minute"
)
_WHY_DENSENET = (
    "native 28x28 input; a 3x3 stride-1 stem; 32 initial channels, growth rate 16 and two convolutions "
    "per dense block, so that more epochs fit"
)
# 02_resnet's plain (no shortcut) against residual networks at two depths, the same steps for all
# four: three stages of n blocks with 16-32-64 channels (He et al.'s CIFAR-10 nets, 6n + 2 layers),
# plain cross-entropy, so the training losses compare directly. The demo's 90 s are all four runs.
_PLAIN, _CE = dict(lr=0.1, stem_kernel=3, stem_stride=2), dict(label_smoothing=0.0)
_DEPTHS = dict(depths=(1, 5), widths=(16, 32, 64))
_WHY_DEPTHS = (
    "8 against 32 layers, 1,000 steps (about 2 epochs) each; a 3x3 stride-2 stem (7x7 maps in the "
    "first stage) keeps the deep nets cheap"
)
_DEGRADATION = Experiment(_NORMALIZED, _PLAIN, _steps(1000, **_CE, eval_every=0), 90, _WHY_DEPTHS, _DEPTHS)

_RECIPES = (
    # ---- 01_batch_norm -------------------------------------------------------------------
    Recipe(
        "lenet",
        models=("d2l.torch.LeNet",),
        ci=Experiment(dict(_BOOK_DATA, **_CI_DATA), _LR, dict(max_epochs=3), 10, _WHY_CI),
        demo=Experiment(
            _BOOK_DATA, _LR, dict(_TIMED, time_budget=30), 35, "the book's LeNet, stopped after 30 s"
        ),
        full=Experiment(_BOOK_DATA, _LR, dict(max_epochs=10), 120, "the book's settings"),
    ),
    # ci: the demo's recipe for a fixed number of steps. With the book's constant rate, so short a
    # run's validation accuracy swings between 62% and 76% with the seed; annealed, it stays at 81-83%.
    Recipe(
        "bn_lenet",
        models=("d2l_ext.batch_norm.BNLeNet", "d2l_ext.batch_norm.BNLeNetScratch"),
        ci=Experiment(_CI_NORMALIZED, _LR, _steps(200), 12, _WHY_CI, floor=0.65),
        demo=Experiment(_NORMALIZED, _LR, _DEMO, 65, "60 s, one-cycle", floor=0.65, target=0.9),
        full=Experiment(_BOOK_DATA, _LR, dict(max_epochs=10), 180, "the book's settings", floor=0.65),
    ),
    Recipe(
        "bn_drift",
        models=("d2l.torch.LeNet", "d2l_ext.batch_norm.BNLeNet"),
        ci=_ci(_DRIFT, 100, seconds=5),
        demo=_DRIFT,
        full=replace(_DRIFT, trainer=_steps(1000, eval_every=0), seconds=30, about="1,000 steps, two epochs"),
    ),
    Recipe(
        "bn_early", ("d2l_ext.batch_norm.BNLeNet",), _ci(_EARLY, 20, 4), _EARLY, replace(_EARLY, seconds=10)
    ),
    Recipe(
        "bn_placement",
        models=("d2l_ext.batch_norm.BNLeNet", "d2l_ext.batch_norm.BNLeNetAfter"),
        ci=_ci(_PLACEMENT, 100, seconds=10, extra=dict(seeds=(0,)), about=_WHY_CI + "; one seed"),
        demo=_PLACEMENT,
        full=replace(_PLACEMENT, trainer=dict(_FAST, max_epochs=10), seconds=240, about="ten epochs per run"),
    ),
    # ---- 02_resnet -----------------------------------------------------------------------
    Recipe(
        "resnet",
        models=("d2l_ext.resnet.ResNet",),
        ci=Experiment(_CI_NORMALIZED, _SMALL_RESNET | _LR, _steps(160), 15, _WHY_CI, floor=0.7),
        demo=Experiment(_BIG_BATCH, _SMALL_RESNET, _DEMO, 70, _WHY_SMALL, floor=0.8, target=0.92),
        full=Experiment(_BOOK_96, _RESNET18, _BOOK, 600, "the book's ResNet-18 run", floor=0.88),
    ),
    Recipe(
        "degradation",
        models=("d2l_ext.resnet.PlainNet", "d2l_ext.resnet.ResNet"),
        ci=replace(_DEGRADATION, data=_CI_64, trainer=_steps(60, **_CE), seconds=15, about="60 steps each"),
        demo=_DEGRADATION,
        full=replace(
            _DEGRADATION,
            model=_PLAIN | dict(stem_stride=1),
            trainer=_steps(3000, **_CE, eval_every=0),
            seconds=600,
            extra=_DEPTHS | dict(depths=(3, 9)),
            about="He et al.'s 20 against 56 layers, 3,000 steps each, 14x14 maps in the first stage",
        ),
    ),
    # ---- 03_resnext ----------------------------------------------------------------------
    Recipe(
        "resnext",
        models=("d2l_ext.resnext.ResNeXt",),
        ci=Experiment(_CI_NORMALIZED, _SMALL_RESNEXT | _LR, _steps(160), 15, _WHY_CI, floor=0.75),
        demo=Experiment(_BIG_BATCH, _SMALL_RESNEXT, _DEMO, 70, _WHY_SMALL, floor=0.7, target=0.91),
        full=Experiment(_BOOK_96, _RESNEXT, _BOOK, 900, "ResNet-18's stages with ResNeXt blocks", floor=0.85),
    ),
    # ---- 04_densenet ---------------------------------------------------------------------
    Recipe(
        "densenet",
        models=("d2l_ext.densenet.DenseNet",),
        ci=Experiment(_CI_NORMALIZED, _SMALL_DENSENET, _steps(160), 15, _WHY_CI, floor=0.7),
        demo=Experiment(_NORMALIZED, _SMALL_DENSENET, _DEMO, 70, _WHY_DENSENET, floor=0.75, target=0.9),
        full=Experiment(_BOOK_96, _DENSENET, _BOOK, 700, "the book's DenseNet run", floor=0.88),
    ),
    # ---- 01_batch_norm: ghost batches (_GHOST) ----------------------------------------
    Recipe(
        "bn_ghost",
        models=("d2l_ext.batch_norm.BNLeNet",),
        ci=replace(_GHOST, data=_CI_64, seconds=12, extra=dict(sizes=(2, 4, 16, 64), train_subset=320)),
        demo=replace(_GHOST, extra=dict(sizes=(2, 4, 8, 16, 64, 128), train_subset=640)),
        full=replace(_GHOST, seconds=30, extra=dict(sizes=(2, 4, 8, 16, 32, 64, 128), train_subset=640)),
    ),
)

EXPERIMENTS: dict[str, Recipe] = {recipe.name: recipe for recipe in _RECIPES}


def experiment(name: str, preset: str | None = None, verbose: bool = True) -> Experiment:
    """The settings of experiment ``name`` under ``preset`` (default: the one in force), printed, as a
    copy with plain dicts: a notebook that changes its ``cfg`` cannot change the recipe."""
    if name not in EXPERIMENTS:
        known = sorted(EXPERIMENTS)
        raise KeyError(f"No experiment {name!r}; {_hint(name, known)}known: {', '.join(known)}.")
    exp = EXPERIMENTS[name][preset or current_preset()]
    exp = replace(exp, **{k: dict(getattr(exp, k)) for k in MAPPINGS})
    if verbose:
        print(exp)
    return exp


def floors_table() -> str:
    """Every recipe's floor under each preset and its demo target, as a Markdown table."""
    lines = [
        f"| experiment | {' | '.join(f'floor {p}' for p in PRESETS)} | demo target |",
        "|---|" + "---:|" * 4,
    ]
    for name, recipe in EXPERIMENTS.items():
        cells = [recipe[p].floor for p in PRESETS] + [recipe.demo.target]
        lines.append(f"| {name} | {' | '.join('-' if x is None else f'{100 * x:g}%' for x in cells)} |")
    return "\n".join(lines)

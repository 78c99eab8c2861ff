"""Run presets: one knob, ``D2L_EXT_PRESET``, and the recipe of every training in the notebooks.

* ``ci``   the same code end to end on a fixed, class-balanced 10,000-image training subset and a
           1,000-image test subset, a fixed number of steps (so the result does not depend on the
           machine's speed), seconds per model: what the test suite executes.
* ``demo`` what an instructor runs live on a laptop CPU: the full data set, at most a minute of
           training per model, shaped for the machine (native 28x28 input, a stem for small
           images, narrow stages, a one-cycle schedule that follows the clock).
* ``full`` the book's settings (resolution, epochs, learning rate); meant for a GPU.

The default is ``full`` where CUDA has a GPU and ``demo`` elsewhere. A notebook asks for its
experiment by name, ``cfg = experiment('resnet')``, which prints the preset in force, the settings,
the expected time and accuracy; it then builds ``FashionMNIST(**cfg.data)``, the model from
``cfg.model`` and ``Trainer(**cfg.trainer)``, and asserts ``val_acc >= cfg.floor``.

Each experiment is one `Recipe` in `EXPERIMENTS`: its `Experiment` under each preset, with the
accuracy every run must reach (``floor``) and the one a run on a quiet machine is expected to reach
(``target``, what ``benchmarks/time_to_accuracy.py`` checks). Retuning a preset touches only its
recipe. A setting that `FashionMNIST` or `Trainer` does not take is refused when this module loads.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import torch

from d2l_ext.data import FashionMNIST
from d2l_ext.training import Trainer

__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "Experiment",
    "Recipe",
    "current_preset",
    "experiment",
    "floors_table",
]

PRESETS = ("ci", "demo", "full")


def current_preset() -> str:
    """The preset in force: ``$D2L_EXT_PRESET``, else ``full`` with a CUDA GPU and ``demo`` without."""
    given = os.environ.get("D2L_EXT_PRESET", "")
    name = given.strip().lower()
    if not name:
        return "full" if torch.cuda.is_available() else "demo"
    if name not in PRESETS:
        raise ValueError(
            f"D2L_EXT_PRESET={given!r} is not a preset; use one of {', '.join(PRESETS)}, "
            "or unset it for the default (full with a CUDA GPU, demo without)."
        )
    return name


MAPPINGS = ("data", "model", "trainer", "extra")


@dataclass(frozen=True)
class Experiment:
    """One training under one preset: what to build and train, how long it takes, and the accuracy
    it must reach. In a `Recipe` its mappings are read-only; `experiment` hands out a copy with its
    name and preset and plain dicts, so that a notebook that changes its ``cfg`` cannot change the
    recipe."""

    data: Mapping[str, Any]  # FashionMNIST(**data)
    model: Mapping[str, Any]  # keyword arguments of the recipe's model classes
    trainer: Mapping[str, Any]  # Trainer(**trainer)
    seconds: float  # expected wall time of the training cell (2-core CPU; GPU for ``full``)
    about: str = ""  # what is scaled relative to the book, and why
    extra: Mapping[str, Any] = field(default_factory=dict)  # experiment-specific knobs
    # Validation accuracy every run must reach (asserted by the notebooks and the tests; None: no
    # floor). A timed (demo) run sees fewer images on a slower machine, so its floor is what a
    # machine ten times slower reaches in the same budget: the verdict must not depend on the
    # machine's speed. ``target``: the accuracy expected on a quiet machine (the benchmark's).
    floor: float | None = None
    target: float | None = None
    name: str = ""  # filled in by `experiment`
    preset: str = ""

    def __str__(self) -> str:
        def fmt(d: Mapping[str, Any]) -> str:
            return ", ".join(f"{k}={v!r}" for k, v in d.items()) or "-"

        where = "a GPU" if self.preset == "full" else "a 2-core CPU"
        lines = [
            f"Experiment {self.name!r} under preset {self.preset!r} "
            f"(set D2L_EXT_PRESET to one of {', '.join(PRESETS)} to change it)",
            f"  data:     {fmt(self.data)}",
            f"  model:    {fmt(self.model)}",
            f"  trainer:  {fmt(self.trainer)}",
        ]
        if self.extra:
            lines.append(f"  also:     {fmt(self.extra)}")
        lines.append(f"  expected: about {self.seconds:.0f} s on {where}")
        accuracy = []
        if self.floor is not None:
            accuracy.append(f"at least {100 * self.floor:g}% on every run (cfg.floor, asserted)")
        if self.target is not None:
            accuracy.append(f"about {100 * self.target:g}% on a quiet machine (cfg.target)")
        if accuracy:
            lines.append(f"  accuracy: validation {'; '.join(accuracy)}")
        if self.about:
            lines.append(f"  why:      {self.about}")
        return "\n".join(lines)


def _check_names(where: str, what: str, settings: Mapping[str, Any], fn: Callable) -> None:
    """Refuse a setting name that ``fn`` does not take, naming the closest one it does."""
    known = [n for n in inspect.signature(fn).parameters if n != "self"]
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(
                f"{where}: {what} setting {name!r} is not an argument of {fn.__name__}; {hint}"
                f"it takes {', '.join(known)}."
            )


@dataclass(frozen=True)
class Recipe:
    """An experiment of the notebooks: its model classes and its settings under every preset.

    ``models`` are dotted paths of the classes that ``model`` configures (the first is the one the
    benchmark trains); ``recipe[preset]`` is that preset's `Experiment`, its mappings read-only.
    """

    name: str
    models: tuple[str, ...]
    ci: Experiment
    demo: Experiment
    full: Experiment

    def __post_init__(self) -> None:
        for preset in PRESETS:
            read_only = {k: MappingProxyType(dict(getattr(getattr(self, preset), k))) for k in MAPPINGS}
            object.__setattr__(self, preset, replace(getattr(self, preset), **read_only))
            s, where = self[preset], f"experiment {self.name!r}, preset {preset!r}"
            _check_names(where, "data", s.data, FashionMNIST)
            _check_names(where, "trainer", s.trainer, Trainer)
            if not s.seconds > 0:
                raise ValueError(f"{where}: the expected seconds must be positive, got {s.seconds!r}.")
            for kind in ("floor", "target"):
                value = getattr(s, kind)
                if value is not None and not 0 < value < 1:
                    raise ValueError(f"{where}: {kind} is an accuracy in (0, 1), got {value!r}.")
            if s.floor is not None and s.target is not None and s.target < s.floor:
                raise ValueError(f"{where}: the target {s.target} is below the floor {s.floor}.")

    def __getitem__(self, preset: str) -> Experiment:
        if preset not in PRESETS:
            raise KeyError(f"{preset!r} is not a preset; use one of {', '.join(PRESETS)}.")
        return getattr(self, preset)


# Recipe's settings fields are the presets, in order.
assert tuple(f.name for f in fields(Recipe))[2:] == PRESETS


# Settings shared by many experiments.
_BOOK_DATA = dict(batch_size=128)  # the book's minibatch
_NORMALIZED = dict(batch_size=128, normalize=True)  # standardized inputs, for BN's comparisons
_CI_DATA = dict(train_subset=10_000, val_subset=1_000)  # fixed, class-balanced subsets
_LR = dict(lr=0.1)
# The recipe that shapes a run for a small CPU (../PERFORMANCE study): SGD with Nesterov momentum
# under a one-cycle schedule, weight decay, label smoothing, channels-last.
_FAST = dict(
    optimizer="sgd",
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.1,
    channels_last=True,
)
# A timed demo evaluates once, at the end: evaluating 10,000 images every epoch would eat the minute.
_DEMO = dict(_FAST, max_epochs=1000, time_budget=60, eval_every=0)
_BOOK = dict(max_epochs=10, channels_last=True, amp=True)  # the book's run, plus GPU speed-ups
_SMALL_STEM = dict(stem_kernel=3, stem_stride=1)
_BOOK_STEM = dict(stem_kernel=7, stem_stride=2)
_SMALL_STAGES = ((1, 16), (1, 32), (1, 64), (1, 128))  # one block per stage, narrow
_RESNET18_STAGES = ((2, 64), (2, 128), (2, 256), (2, 512))
_WHY_SMALL = (
    "native 28x28 input instead of 96x96 (9x fewer pixels); a 3x3 stride-1 stem, since "
    "7x7 stride 2 is meant for 224-pixel images; one block per stage with widths "
    "16-32-64-128, so that more epochs fit in the minute"
)
_WHY_CI = "a 10,000-image training subset and a fixed step count, so CI takes seconds"


def _ci(demo: Experiment, steps: int, seconds: float, **changes) -> Experiment:
    """The ci run of a recipe whose demo runs a fixed number of steps: the demo's run on the CI
    subsets, with fewer ``steps``."""
    data, trainer = {**demo.data, **_CI_DATA}, {**demo.trainer, "max_steps": steps}
    return replace(demo, **{"about": _WHY_CI, **changes}, data=data, trainer=trainer, seconds=seconds)


_BN_DRIFT = Experiment(
    data=_NORMALIZED,
    model=_LR,
    trainer=dict(_FAST, max_epochs=100, max_steps=300, eval_every=0),
    seconds=18,
    about="300 steps, the same for both models, so the curves line up step by step",
)
_BN_EARLY = Experiment(
    data=_NORMALIZED,
    model=_LR,
    trainer=dict(max_epochs=1, max_steps=20, eval_every=0),
    seconds=15,
    about="20 steps, then one pass over the training set per BN layer",
)
_BN_PLACEMENT = Experiment(
    data=_NORMALIZED,
    model=_LR,
    trainer=dict(_FAST, max_epochs=100, max_steps=300, eval_every=0),
    seconds=30,
    about="300 steps per run, two seeds per placement, so that the gap can be set against "
    "the spread between seeds",
    extra=dict(seeds=(0, 1)),
    floor=0.5,
)

_RECIPES = (
    # ---- 01_batch_norm -------------------------------------------------------------------
    Recipe(
        "lenet",
        models=("d2l.torch.LeNet",),
        ci=Experiment(dict(_BOOK_DATA, **_CI_DATA), _LR, dict(max_epochs=3), seconds=10, about=_WHY_CI),
        demo=Experiment(
            _BOOK_DATA,
            _LR,
            dict(max_epochs=1000, time_budget=30, eval_every=0),
            seconds=35,
            about="the book's LeNet and settings, stopped after 30 s",
        ),
        full=Experiment(_BOOK_DATA, _LR, dict(max_epochs=10), seconds=120, about="the book's settings"),
    ),
    Recipe(
        "bn_lenet",
        models=("d2l_ext.batch_norm.BNLeNet", "d2l_ext.batch_norm.BNLeNetScratch"),
        # The demo's recipe for a fixed number of steps: with the book's constant rate, the
        # validation accuracy of so short a run swings between 62% and 76% with the seed; annealed,
        # it stays within 81-83%.
        ci=Experiment(
            dict(_NORMALIZED, **_CI_DATA),
            _LR,
            dict(_FAST, max_epochs=100, max_steps=200),
            seconds=12,
            floor=0.65,
            about=_WHY_CI + "; the demo's recipe",
        ),
        demo=Experiment(
            _NORMALIZED,
            _LR,
            _DEMO,
            seconds=65,
            floor=0.65,
            target=0.9,
            about="the book's BN-LeNet, trained for 60 s with a one-cycle schedule",
        ),
        full=Experiment(
            _BOOK_DATA, _LR, dict(max_epochs=10), seconds=180, floor=0.65, about="the book's settings"
        ),
    ),
    # Short like-for-like runs: LeNet and BN-LeNet (drift), BN before or after the activation
    # (placement), each under the BN-LeNet demo's recipe for a fixed number of steps.
    Recipe(
        "bn_drift",
        models=("d2l.torch.LeNet", "d2l_ext.batch_norm.BNLeNet"),
        ci=_ci(_BN_DRIFT, steps=100, seconds=5),
        demo=_BN_DRIFT,
        full=replace(
            _BN_DRIFT,
            trainer={**_BN_DRIFT.trainer, "max_steps": 1000},
            seconds=30,
            about="1,000 steps, about two epochs",
        ),  # fmt: skip
    ),
    # BN-LeNet after 20 steps of the book's plain SGD: its running estimates still lag.
    Recipe(
        "bn_early",
        models=("d2l_ext.batch_norm.BNLeNet",),
        ci=_ci(_BN_EARLY, steps=20, seconds=4),
        demo=_BN_EARLY,
        full=replace(_BN_EARLY, seconds=10),
    ),
    Recipe(
        "bn_placement",
        models=("d2l_ext.batch_norm.BNLeNet", "d2l_ext.batch_norm.BNLeNetAfter"),
        ci=_ci(_BN_PLACEMENT, 100, 10, extra=dict(seeds=(0,)), about=_WHY_CI + "; one seed per placement"),
        demo=_BN_PLACEMENT,
        full=replace(
            _BN_PLACEMENT,
            trainer=dict(_FAST, max_epochs=10),
            seconds=240,
            about="ten epochs per run, two seeds per placement",
        ),  # fmt: skip
    ),
    # ---- 02_resnet -----------------------------------------------------------------------
    Recipe(
        "resnet",
        models=("d2l_ext.resnet.ResNet",),
        ci=Experiment(
            dict(_NORMALIZED, **_CI_DATA),
            dict(arch=_SMALL_STAGES, lr=0.1, **_SMALL_STEM),
            dict(_FAST, max_epochs=100, max_steps=160),
            seconds=15,
            floor=0.7,
            about=_WHY_CI,
        ),
        demo=Experiment(
            dict(batch_size=256, normalize=True),
            dict(arch=_SMALL_STAGES, lr=0.2, **_SMALL_STEM),
            _DEMO,
            seconds=70,
            floor=0.8,  # 94 steps (a tenth of a quiet minute) reached 0.883
            target=0.92,
            about=_WHY_SMALL,
        ),
        full=Experiment(
            dict(_BOOK_DATA, resize=96),
            dict(arch=_RESNET18_STAGES, lr=0.01, **_BOOK_STEM),
            _BOOK,
            seconds=600,
            floor=0.88,
            about="the book's ResNet-18 run",
        ),
    ),
    # Plain (no shortcut) against residual networks at two depths, the same steps for all four:
    # three stages of n blocks with 16-32-64 channels (He et al.'s CIFAR-10 nets, 6n + 2 layers);
    # plain cross-entropy (no label smoothing), so the training losses compare directly.
    Recipe(
        "degradation",
        models=("d2l_ext.resnet.PlainNet", "d2l_ext.resnet.ResNet"),
        ci=Experiment(
            dict(batch_size=64, normalize=True, **_CI_DATA),
            dict(lr=0.1, stem_kernel=3, stem_stride=2),
            dict(_FAST, label_smoothing=0.0, max_epochs=100, max_steps=60),
            seconds=15,
            extra=dict(depths=(1, 5), widths=(16, 32, 64)),
            about="8 against 32 layers, 60 steps each on the 10,000-image subset",
        ),
        demo=Experiment(
            _NORMALIZED,
            dict(lr=0.1, stem_kernel=3, stem_stride=2),
            dict(_FAST, label_smoothing=0.0, max_epochs=100, max_steps=1000, eval_every=0),
            seconds=90,  # all four runs together
            extra=dict(depths=(1, 5), widths=(16, 32, 64)),
            about="8 against 32 layers, 1,000 steps (about 2 epochs) each; a 3x3 stride-2 stem "
            "(7x7 maps in the first stage) keeps the deep nets cheap",
        ),
        full=Experiment(
            _NORMALIZED,
            dict(lr=0.1, stem_kernel=3, stem_stride=1),
            dict(_FAST, label_smoothing=0.0, max_epochs=100, max_steps=3000, eval_every=0),
            seconds=600,
            extra=dict(depths=(3, 9), widths=(16, 32, 64)),
            about="He et al.'s 20 against 56 layers, 3,000 steps each, 14x14 maps in the first stage",
        ),
    ),
    # ---- 03_resnext ----------------------------------------------------------------------
    Recipe(
        "resnext",
        models=("d2l_ext.resnext.ResNeXt",),
        ci=Experiment(
            dict(_NORMALIZED, **_CI_DATA),
            dict(arch=_SMALL_STAGES, groups=8, bot_mul=1, lr=0.1, **_SMALL_STEM),
            dict(_FAST, max_epochs=100, max_steps=160),
            seconds=15,
            floor=0.75,
            about=_WHY_CI,
        ),
        demo=Experiment(
            dict(batch_size=256, normalize=True),
            dict(arch=_SMALL_STAGES, groups=8, bot_mul=1, lr=0.2, **_SMALL_STEM),
            _DEMO,
            seconds=70,
            floor=0.7,
            target=0.91,
            about=_WHY_SMALL,
        ),
        full=Experiment(
            dict(_BOOK_DATA, resize=96),
            dict(arch=_RESNET18_STAGES, groups=32, bot_mul=0.5, lr=0.05, **_BOOK_STEM),
            _BOOK,
            seconds=900,
            floor=0.85,
            about="ResNet-18's stages with ResNeXt blocks, at the book's resolution",
        ),
    ),
    # ---- 04_densenet ---------------------------------------------------------------------
    Recipe(
        "densenet",
        models=("d2l_ext.densenet.DenseNet",),
        ci=Experiment(
            dict(_NORMALIZED, **_CI_DATA),
            dict(num_channels=32, growth_rate=16, arch=(2, 2, 2, 2), lr=0.1, **_SMALL_STEM),
            dict(_FAST, max_epochs=100, max_steps=160),
            seconds=15,
            floor=0.7,
            about=_WHY_CI,
        ),
        demo=Experiment(
            _NORMALIZED,
            dict(num_channels=32, growth_rate=16, arch=(2, 2, 2, 2), lr=0.1, **_SMALL_STEM),
            _DEMO,
            seconds=70,
            floor=0.75,
            target=0.9,
            about="native 28x28 input; a 3x3 stride-1 stem; 32 initial channels, growth "
            "rate 16 and two convolutions per dense block, so more epochs fit",
        ),
        full=Experiment(
            dict(_BOOK_DATA, resize=96),
            dict(num_channels=64, growth_rate=32, arch=(4, 4, 4, 4), lr=0.01, **_BOOK_STEM),
            _BOOK,
            seconds=700,
            floor=0.88,
            about="the book's DenseNet run",
        ),
    ),
    # 01_batch_norm: BN-LeNet with BN statistics taken over ghost batches of each size in
    # extra["sizes"] (the SGD minibatch and the steps stay the same): noise against overfitting, and
    # how small a BN batch can be. The small training set, extra["train_subset"], is the experiment's
    # design (40 epochs, so that the network overfits), not a shortcut: even the demo keeps it.
    Recipe(
        "bn_ghost",
        models=("d2l_ext.batch_norm.BNLeNet",),
        ci=Experiment(
            dict(batch_size=64, normalize=True, **_CI_DATA),
            _LR,
            dict(_FAST, max_epochs=1000, max_steps=200, eval_every=0),
            seconds=12,
            extra=dict(sizes=(2, 4, 16, 64), train_subset=320),
            about="200 steps of 64 examples per BN batch size on 320 training images; four sizes",
        ),
        demo=Experiment(
            _NORMALIZED,
            _LR,
            dict(_FAST, max_epochs=1000, max_steps=200, eval_every=0),
            seconds=60,
            extra=dict(sizes=(2, 4, 8, 16, 64, 128), train_subset=640),
            about="200 steps of 128 examples per BN batch size on 640 training images, the full test "
            "set; six sizes",
        ),
        full=Experiment(
            _NORMALIZED,
            _LR,
            dict(_FAST, max_epochs=1000, max_steps=200, eval_every=0),
            seconds=30,
            extra=dict(sizes=(2, 4, 8, 16, 32, 64, 128), train_subset=640),
            about="200 steps of 128 examples per BN batch size on 640 training images, the full test "
            "set; seven sizes",
        ),
    ),
)

EXPERIMENTS: dict[str, Recipe] = {recipe.name: recipe for recipe in _RECIPES}


def experiment(name: str, preset: str | None = None, verbose: bool = True) -> Experiment:
    """The settings of experiment ``name`` under ``preset`` (default: the one in force), printed."""
    if name not in EXPERIMENTS:
        raise KeyError(f"No experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}.")
    preset = preset or current_preset()
    if preset not in PRESETS:
        raise ValueError(f"{preset!r} is not a preset; use one of {', '.join(PRESETS)}.")
    recipe = EXPERIMENTS[name][preset]
    exp = replace(recipe, name=name, preset=preset, **{k: dict(getattr(recipe, k)) for k in MAPPINGS})
    if verbose:
        print(exp)
    return exp


def floors_table() -> str:
    """Every recipe's floor under each preset and its demo target, as a Markdown table."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:g}%"

    lines = [
        "| experiment | " + " | ".join(f"floor {p}" for p in PRESETS) + " | demo target |",
        "|---|" + "---:|" * (len(PRESETS) + 1),
    ]
    for name, recipe in EXPERIMENTS.items():
        floors = " | ".join(pct(recipe[p].floor) for p in PRESETS)
        lines.append(f"| {name} | {floors} | {pct(recipe.demo.target)} |")
    return "\n".join(lines)

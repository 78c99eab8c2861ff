"""d2l's Trainer, shaped for the machine it runs on, with its extras as small pieces.

`Trainer` is the book's training loop (`d2l.Trainer`) with hooks: ``before_fit``, ``before_epoch``,
``before_batch``, ``after_loss``, ``after_batch``, ``after_epoch``, ``after_fit`` (and
``after_replay``, when `d2l_ext.runs.fit` replays a stored run instead of training). Everything this
bundle adds is a `Callback`, a small class that fills in some of these hooks, as in fastai's
``Learner``. `Trainer` keeps the book's API (``Trainer(max_epochs, num_gpus).fit(model, data)``, the
model's ``loss`` and ``configure_optimizers``) and builds the pieces its settings ask for: a step or
time budget, a one-cycle schedule, channels-last, mixed precision, the progress board, the
divergence check and the per-epoch ``history``; ``Trainer(..., callbacks=[...])`` adds more. With
its defaults it trains exactly as `d2l.Trainer` does on the CPU; it differs in taking a GPU where
there is one and in leaving out a last training batch of a single example.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.measure import eval_mode, has_lazy, train_mode

__all__ = [
    "Budget",
    "Callback",
    "ChannelsLast",
    "DivergenceCheck",
    "History",
    "MixedPrecision",
    "OneCycle",
    "ProgressDisplay",
    "StepLosses",
    "Trainer",
    "evaluate",
    "make_optimizer",
    "set_seed",
]


def set_seed(seed: int) -> None:
    """Seed Python's and torch's global generators (``torch.manual_seed`` seeds every CUDA device too).

    A data loader with a generator of its own (d2l_ext's `TensorLoader`) is not reseeded here:
    `Trainer.fit` reseeds it with the trainer's ``seed``, so that a data object reused across runs
    gives every run with the same seed the same order.
    """
    random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``loader``.

    Every submodule gets its own mode back afterwards, also when the model raises or on Ctrl-C.
    """
    total_loss, correct, n = 0.0, 0, 0
    with eval_mode(model):
        for X, y in loader:
            if device is not None:
                X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            logits = model(X).float()  # (N, num_classes)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    if n == 0:
        raise ValueError("evaluate() got a loader without examples; pass the validation loader.")
    return {"loss": total_loss / n, "acc": correct / n}


# -- the pieces ------------------------------------------------------------------------------------


class Callback:
    """A piece of the training loop: each hook gets the trainer and does nothing until overridden.

    The loop calls the hooks of its pieces in list order. A piece reads and writes the trainer's
    state (``trainer.batch``, ``trainer.loss``, ``trainer.optim``, ...); setting
    ``trainer.should_stop = True`` ends the run after the current step.

    A piece that records something for after the run defines ``state_dict()`` and
    ``load_state_dict(state)``: `d2l_ext.runs.fit` stores that state with the run and, when it
    replays the run, loads it and calls ``after_replay`` (e.g. to draw the stored curve).
    """

    def before_fit(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_batch(self, trainer: Trainer) -> None: ...
    def after_loss(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...
    def after_replay(self, trainer: Trainer) -> None: ...


class DivergenceCheck(Callback):
    """Stops at the first loss that is not finite or over ``factor`` times the first step's loss.

    Without it a diverged run trains on to the end and reports chance accuracy. BN can keep a
    diverged model's loss finite, if huge, hence the second test; its scale is the first loss,
    or 1 if that is smaller. On the CPU the check reads every loss before its backward pass, so
    the failing step never updates the weights. On a GPU reading a loss makes the CPU wait for
    it, so there the first bad step is kept on the device and read every ``every`` steps and at
    each epoch's end; the steps in between have updated the weights by then.
    """

    def __init__(self, factor: float = 1000.0, every: int | None = None):
        self.factor, self.every = factor, every

    def before_fit(self, trainer):
        self.period = self.every or (1 if trainer.device.type == "cpu" else 50)
        self.limit, self.bad_loss = None, torch.zeros((), device=trainer.device)
        self.first_bad = torch.zeros((), dtype=torch.long, device=trainer.device)  # 0: none yet

    def after_loss(self, trainer):
        loss, step = trainer.loss.detach().float(), trainer.train_batch_idx + 1  # steps count from 1
        if self.limit is None:
            self.limit = self.factor * loss.abs().clamp(min=1.0)
        fresh = (self.first_bad == 0) & ~(loss.abs() <= self.limit)  # NaN compares False: caught
        self.first_bad = torch.where(fresh, step, self.first_bad)
        self.bad_loss = torch.where(fresh, loss, self.bad_loss)
        if step % self.period == 0:
            self.check(trainer)

    def after_epoch(self, trainer):
        self.check(trainer)

    def check(self, trainer) -> None:
        step = int(self.first_bad)
        if step:
            raise FloatingPointError(
                f"The training loss is {float(self.bad_loss):.4g} at step {step} (epoch "
                f"{trainer.epoch + 1}): training diverged. Lower the learning rate (the peak is "
                f"{trainer.base_lrs[0]:g}), or clip the gradients, e.g. "
                "Trainer(gradient_clip_val=1.0). Make the model anew before training it again."
            )


class History(Callback):
    """One record per epoch in ``trainer.history``: steps, training loss and accuracy, seconds,
    images/s, and the validation loss and accuracy when the epoch was validated.

    Losses and correct counts add up as tensors on the device: no wait for the GPU at each step.
    """

    def before_fit(self, trainer):
        trainer.history = []

    def before_epoch(self, trainer):
        self.seen, self.loss_sum, self.correct, self.start = 0, 0.0, 0, trainer.train_seconds

    def after_batch(self, trainer):
        y = trainer.batch[1]
        self.seen += len(y)
        self.loss_sum += trainer.loss.detach() * len(y)
        self.correct += (trainer.Y_hat.detach().argmax(1) == y).sum()

    def after_epoch(self, trainer):
        record = {
            "epoch": trainer.epoch + 1,
            "steps": trainer.train_batch_idx,
            "train_loss": float(self.loss_sum) / self.seen,
            "train_acc": float(self.correct) / self.seen,
            "seconds": trainer.train_seconds,
            "images_per_s": self.seen / max(trainer.train_seconds - self.start, 1e-9),
        }
        if trainer.val_metrics is not None:
            record.update(val_loss=trainer.val_metrics["loss"], val_acc=trainer.val_metrics["acc"])
        trainer.history.append(record)


class Budget(Callback):
    """Ends the run after ``max_steps`` optimizer steps or ``seconds`` of training, whichever is first.

    A timed demo fits any machine: a slow one trains fewer steps in the same minute.
    """

    def __init__(self, max_steps: int | None = None, seconds: float | None = None):
        self.max_steps, self.seconds = max_steps, seconds

    def after_batch(self, trainer):
        if self.max_steps is not None and trainer.train_batch_idx >= self.max_steps:
            trainer.should_stop = True
        if self.seconds is not None and trainer.train_seconds >= self.seconds:
            trainer.should_stop = True


class OneCycle(Callback):
    """One-cycle learning rate: a linear warm-up from 4% of the peak over the first ``warmup`` of
    the run, then cosine decay to zero. The run's length is its budget (`Trainer.progress`).

    Warm-up keeps the first large steps from wrecking the initialization; annealing to zero
    lets a short run settle into a minimum instead of bouncing around it.
    """

    def __init__(self, warmup: float = 0.2):
        self.warmup = warmup

    def factor(self, p: float) -> float:
        """Factor of the peak rate at fraction ``p`` in [0, 1] of the run."""
        if p < self.warmup:
            return 0.04 + 0.96 * p / self.warmup
        return 0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup)))

    def before_batch(self, trainer):
        factor = self.factor(trainer.progress())
        for group, peak in zip(trainer.optim.param_groups, trainer.base_lrs):
            group["lr"] = peak * factor


class ChannelsLast(Callback):
    """NHWC memory format for the model and every batch: faster convolutions on CPUs and tensor cores."""

    def before_fit(self, trainer):
        trainer.model.to(memory_format=torch.channels_last)  # keeps the Parameter objects

    def before_batch(self, trainer):
        X, y = trainer.batch
        trainer.batch = (X.contiguous(memory_format=torch.channels_last), y)


class MixedPrecision(Callback):
    """bfloat16 autocast of the forward pass on CUDA (on the CPU it does nothing).

    bfloat16 has float32's exponent range, so unlike float16 it needs no gradient scaling.
    """

    def before_fit(self, trainer):
        if trainer.device.type == "cuda":
            trainer.autocast = torch.autocast("cuda", dtype=torch.bfloat16)


class ProgressDisplay(Callback):
    """Draws the run live on the book's board (``model.board``), x in epochs (fractions included):
    the mean training loss every ``every`` seconds of training, and the validation loss and
    accuracy when an epoch is validated.

    d2l's board renders the whole figure anew at every redraw, so a point per step would spend
    much of a timed demo on drawing; a point every few seconds draws a curve the hall can follow
    during a one-minute run at a small cost (one wait for the GPU per point).
    """

    def __init__(self, every: float = 3.0):
        if not every > 0:
            raise ValueError(f"ProgressDisplay draws every so many seconds (> 0), got {every!r}.")
        self.every = every

    def before_fit(self, trainer):
        self.prepare_board(trainer)
        self.loss_sum, self.steps, self.last = 0.0, 0, 0.0
        self.points: list[tuple[float, dict[str, float]]] = []  # what was drawn, for a replay

    @staticmethod
    def prepare_board(trainer) -> None:
        board = trainer.model.board
        if trainer.time_budget is not None or trainer.max_steps is not None:
            board.xlim = None  # the number of epochs is not known in advance
        board.xlabel = "epoch"  # without one, d2l's ProgressBoard.draw reads a missing .x
        board.display = True
        if board.fig is None:  # d2l's board makes its figure at its first point; make it here, with
            # a dot at every point: a run validated only at its end has a single validation point,
            # which a line alone does not show (its legend entry would stand for nothing).
            board.fig = d2l.plt.figure(figsize=board.figsize)
            board.fig.gca().set_prop_cycle(marker=["o"], markersize=[4])

    def after_batch(self, trainer):
        self.loss_sum += trainer.loss.detach()  # a tensor: no wait for the GPU until a point
        self.steps += 1
        if trainer.train_seconds - self.last >= self.every:
            self.flush(trainer)

    def after_epoch(self, trainer):
        record = trainer.history[-1]
        self.flush(trainer, {k: record[k] for k in ("val_loss", "val_acc") if k in record})

    def flush(self, trainer, values: dict[str, float] | None = None) -> None:
        """Draw the loss of the steps since the last point and ``values``, at the x of now."""
        points = {}
        if self.steps:
            points["train_loss"] = float(self.loss_sum) / self.steps
            self.loss_sum, self.steps = 0.0, 0
        points.update(values or {})
        if points:
            n = getattr(trainer, "num_train_examples", 0)
            x = trainer.images_seen / n if n else trainer.train_batch_idx / trainer.steps_per_epoch
            self.points.append((x, points))
            self.draw(trainer.model.board, x, points)
        self.last = trainer.train_seconds

    def state_dict(self) -> dict:
        return {"points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.points = [(x, dict(values)) for x, values in state["points"]]

    def after_replay(self, trainer):
        """Draw the stored run's curve at once (from its history if it was trained without a plot)."""
        self.prepare_board(trainer)
        points = getattr(self, "points", None) or self.history_points(trainer)
        for i, (x, values) in enumerate(points):
            self.draw(trainer.model.board, x, values, redraw=i == len(points) - 1)

    @staticmethod
    def history_points(trainer) -> list[tuple[float, dict[str, float]]]:
        """One point per epoch of ``trainer.history``: the training loss and any validation numbers."""
        keys = ("train_loss", "val_loss", "val_acc")
        points = [(float(r["epoch"]), {k: r[k] for k in keys if k in r}) for r in trainer.history]
        n = getattr(trainer, "num_train_examples", 0)
        if points and n:  # a timed run may stop inside its last epoch
            points[-1] = (trainer.images_seen / n, points[-1][1])
        return points

    @staticmethod
    def draw(board: d2l.ProgressBoard, x: float, values: dict[str, float], redraw: bool = True) -> None:
        """Add one point per curve at ``x``; redraw the figure once after the last one (if ``redraw``)."""
        for i, (key, value) in enumerate(values.items()):
            board.display = redraw and i == len(values) - 1
            board.draw(x, value, key, every_n=1)
        board.display = True


class StepLosses(Callback):
    """The training loss of every optimizer step, in ``losses`` (Python floats), for curves finer
    than one point per epoch. Reading each loss makes the CPU wait for the GPU at every step."""

    def before_fit(self, trainer):
        self.losses: list[float] = []

    def after_batch(self, trainer):
        self.losses.append(trainer.loss.item())

    def state_dict(self) -> dict:
        return {"losses": self.losses}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state["losses"])


# -- settings ----------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


#: What each setting allows (a test, and the words for the error), checked before any training.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_epochs": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "max_steps": (lambda v: v is None or _is_int(v) and v >= 1, "None (no limit) or a positive int"),
    "time_budget": (
        lambda v: v is None or _is_number(v) and v > 0,
        "None (no limit) or a positive number of seconds",
    ),
    "eval_every": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: only at the end)"),
    "warmup": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction of the run in [0, 1)"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gradient_clip_val": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    # torch's SGD checks only the arguments it is built with, with `<`: a string fails deep inside
    # it, and the weight decay that make_optimizer puts in the parameter groups is not checked.
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.9 (0: plain SGD)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0, e.g. 5e-4 (0: off)"),
    # The model's, checked by fit. NaN and inf pass: the divergence check stops such a run and
    # names the rate.
    "lr": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and not v <= 0,
        "a positive number, the model's learning rate, e.g. 0.1",
    ),
    "schedule": (lambda v: v in ("constant", "onecycle"), "'constant' or 'onecycle'"),
    "optimizer": (lambda v: v in (None, "sgd"), "None (the model's own) or 'sgd'"),
    "seed": (_is_int, "an int"),
    "clock": (callable, "a function that returns seconds, such as time.perf_counter"),
}


def _check_settings(settings: dict[str, Any]) -> None:
    for name, value in settings.items():
        if name in _RULES and not _RULES[name][0](value):
            raise ValueError(f"{name} must be {_RULES[name][1]}; got {name}={value!r}.")


def _check_callbacks(callbacks: Sequence[Callback]) -> list[Callback]:
    for cb in callbacks:
        if not isinstance(cb, Callback):
            hint = f"; pass an instance, {cb.__name__}()" if isinstance(cb, type) else ""
            raise TypeError(f"callbacks must be Callback objects, got {cb!r}{hint}.")
    return list(callbacks)


def _steps_per_epoch(data, num_batches: int) -> int:
    """Batches to train on per epoch: all but a last batch of one example, which BN cannot normalize."""
    n, batch_size = len(getattr(data, "train", ())), getattr(data, "batch_size", None)
    if num_batches == 0:
        raise ValueError("The training set has no batches: give the data module some examples.")
    if batch_size and num_batches > 1 and n % batch_size == 1:
        warnings.warn(
            f"The last training batch holds one example ({n} examples in batches of {batch_size}), "
            "which BatchNorm cannot normalize; every epoch leaves it out. Choose a batch_size "
            "that leaves more than one example over to train on all of them.",
            stacklevel=4,  # points at the user's fit() call
        )
        return num_batches - 1
    return num_batches


def make_optimizer(
    model: nn.Module, name: str, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD at ``model.lr`` (``name='sgd'``, the one optimizer the recipes use), with ``weight_decay``
    on the weights only.

    Biases and BN's scale and shift (the 1-D parameters) get no weight decay: the "no bias decay"
    of He et al. (2019), "Bag of tricks for image classification with CNNs", section 3.1.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=model.lr, momentum=momentum, nesterov=nesterov)


# -- the loop and the trainer ------------------------------------------------------------------------


class Trainer(d2l.Trainer):
    """The book's training loop (`d2l.Trainer`) with hooks where `Callback` pieces plug in, and the
    pieces the run presets use built from its settings.

    The steps are the book's: per batch, forward, loss, backward, optional gradient clipping, an
    optimizer step; per epoch, validation. Around them the loop calls its pieces' hooks, keeps the
    training time on ``clock`` (less ``paused_seconds``, time a piece spent measuring) and validates
    every ``eval_every`` epochs and at the end. A piece ends the run by setting ``should_stop``.

    Args:
        max_epochs, num_gpus, gradient_clip_val: as in the book; ``num_gpus=None`` takes one GPU
            if CUDA has one.
        time_budget: stop after this many seconds of training (None: no limit); `Budget`.
        max_steps: stop after this many optimizer steps (None: no limit); `Budget`.
        optimizer: None uses ``model.configure_optimizers()`` (the book: plain SGD at ``model.lr``);
            ``'sgd'`` (with ``momentum``, ``nesterov``, ``weight_decay``): `make_optimizer`.
        schedule: ``'constant'`` or ``'onecycle'`` (`OneCycle`, with ``warmup``).
        label_smoothing: passed to cross-entropy during training.
        channels_last: NHWC memory format (`ChannelsLast`).
        amp: bfloat16 autocast on CUDA, ignored on the CPU (`MixedPrecision`).
        eval_every: validate every this many epochs and at the end (0: only at the end).
        seed: seeds initialization and, for a loader with ``reseed``, the data order.
        plot: animate the book's progress board (`ProgressDisplay`).
        callbacks: more pieces, run after those the settings ask for (`default_callbacks`), e.g.
            ``callbacks=[StepLosses()]`` records the loss of every step.
        clock: what every time measurement reads (a test passes a fake one).
    """

    def __init__(
        self,
        max_epochs: int = 10,
        num_gpus: int | None = None,
        gradient_clip_val: float = 0,
        *,
        time_budget: float | None = None,
        max_steps: int | None = None,
        optimizer: str | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        warmup: float = 0.2,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        amp: bool = False,
        eval_every: int = 1,
        seed: int = 0,
        plot: bool = True,
        callbacks: Sequence[Callback] = (),
        clock: Callable[[], float] = time.perf_counter,
    ):
        if num_gpus is None:
            num_gpus = min(1, d2l.num_gpus())
        self.save_hyperparameters(ignore=["callbacks"])
        _check_settings(self.hparams)
        self.extra_callbacks = _check_callbacks(callbacks)
        self.gpus = [d2l.gpu(i) for i in range(min(num_gpus, d2l.num_gpus()))]
        self.history: list[dict[str, float]] = []

    @property
    def device(self) -> torch.device:
        return self.gpus[0] if self.gpus else torch.device("cpu")

    def default_callbacks(self) -> list[Callback]:
        """The divergence check and the per-epoch history, then the pieces the settings ask for."""
        cbs = [DivergenceCheck(), History()]
        if self.max_steps is not None or self.time_budget is not None:
            cbs.append(Budget(self.max_steps, self.time_budget))
        if self.schedule == "onecycle":
            cbs.append(OneCycle(self.warmup))
        if self.channels_last:
            cbs.append(ChannelsLast())
        if self.amp:
            cbs.append(MixedPrecision())
        if self.plot:
            cbs.append(ProgressDisplay())
        return cbs

    def prepare_data(self, data) -> None:
        super().prepare_data(data)
        reseed = getattr(self.train_dataloader, "reseed", None)
        if reseed is not None:  # a data object reused across runs gives the same seed the same order
            reseed(self.seed)
        self.steps_per_epoch = _steps_per_epoch(data, self.num_train_batches)
        self.num_train_examples = len(getattr(data, "train", ()))
        if self.gpus:  # keep an in-memory data set on the GPU: no host-to-device copy per batch
            for loader in (self.train_dataloader, self.val_dataloader):
                if hasattr(loader, "to"):
                    loader.to(self.device)

    def prepare_model(self, model) -> None:
        set_seed(self.seed)
        if has_lazy(model):  # materialize Lazy modules, then initialize as the book's CNNs do
            X = next(iter(self.train_dataloader))[0][:2]
            model.apply_init([X.to("cpu")], d2l.init_cnn)
        super().prepare_model(model)

    def configure_optimizer(self, model) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return model.configure_optimizers()
        return make_optimizer(model, self.optimizer, self.momentum, self.nesterov, self.weight_decay)

    def fit(self, model, data) -> list[dict[str, float]]:
        if hasattr(model, "lr"):  # the book's models take it unchecked; optimizers need a number
            _check_settings({"lr": model.lr})
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = self.configure_optimizer(model)
        self.base_lrs = [g["lr"] for g in self.optim.param_groups]
        self.epoch = self.train_batch_idx = self.val_batch_idx = self.images_seen = 0
        self.train_seconds = self.paused_seconds = 0.0
        self.should_stop, self.autocast = False, contextlib.nullcontext()
        self.callbacks = [*self.default_callbacks(), *self.extra_callbacks]
        with train_mode(model):  # every submodule gets its own mode back, also on Ctrl-C
            self.run("before_fit")
            for self.epoch in range(self.max_epochs):
                self.fit_epoch()
                if self.should_stop:
                    break
            self.run("after_fit")
        return self.history

    def fit_epoch(self) -> None:
        self.run("before_epoch")
        start, paused, seconds = self.clock(), self.paused_seconds, self.train_seconds
        for i, batch in enumerate(self.train_dataloader):
            if i == self.steps_per_epoch:  # a last batch of one example (see _steps_per_epoch)
                break
            if len(batch[-1]) == 0:  # its mean loss, 0 / 0, would read as a diverged run
                raise ValueError(
                    f"The training data's batch {i + 1} of epoch {self.epoch + 1} is empty: the data "
                    "module's training loader must yield batches of at least one example. Leave "
                    "empty batches out of its get_dataloader."
                )
            self.batch = self.prepare_batch(batch)
            self.run("before_batch")
            self.step()
            self.train_seconds = seconds + self.clock() - start - (self.paused_seconds - paused)
            self.run("after_batch")
            if self.should_stop:
                break
        self.validate()
        self.run("after_epoch")

    def step(self) -> None:
        """One optimizer step on ``self.batch``, as the book's ``fit_epoch`` takes it."""
        X, y = self.batch
        with self.autocast:  # a no-op unless a piece (`MixedPrecision`) set one
            self.Y_hat = self.model(X)
            self.loss = self.training_loss(self.Y_hat.float(), y)
        self.run("after_loss")
        self.optim.zero_grad(set_to_none=True)
        self.loss.backward()
        if self.gradient_clip_val > 0:
            self.clip_gradients(self.gradient_clip_val, self.model)
        self.optim.step()
        self.train_batch_idx += 1
        self.images_seen += len(y)

    def training_loss(self, Y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            return F.cross_entropy(Y_hat, y, label_smoothing=self.label_smoothing)
        return self.model.loss(Y_hat, y)

    def validate(self) -> None:
        """Validation loss and accuracy in ``val_metrics`` (else None) when this epoch is due."""
        last = self.should_stop or self.epoch + 1 == self.max_epochs
        due = self.eval_every and (self.epoch + 1) % self.eval_every == 0
        self.val_metrics = None
        if self.val_dataloader is not None and (last or due):
            self.val_metrics = self.measure(self.val_dataloader)
            self.val_batch_idx += self.num_val_batches

    def measure(self, loader) -> dict[str, float]:
        """Loss and accuracy of the model on ``loader`` (`evaluate`), as validation measures them."""
        return evaluate(self.model, loader, self.device, self.channels_last)

    def run(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)

    @property
    def total_steps(self) -> int | float:
        """Steps this run will take at most: ``max_steps``, or fewer if the epochs end first."""
        return min(self.max_steps or math.inf, self.max_epochs * self.steps_per_epoch)

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is further along."""
        p = self.train_batch_idx / self.total_steps
        if self.time_budget is not None:
            p = max(p, self.train_seconds / self.time_budget)
        return min(p, 1.0)

    def summary(self) -> str:
        """One line: epochs, steps, seconds, images/s and the final validation numbers."""
        if not self.history:
            return "No epoch trained yet: call fit(model, data) first."
        last = self.history[-1]
        # A timed run may stop inside an epoch: count epochs by the images seen, not by the loop.
        n = getattr(self, "num_train_examples", 0)
        epochs = f"{self.images_seen / n:.2f} epochs" if n else f"{last['epoch']} epochs"
        text = (
            f"{epochs}, {last['steps']} steps in {last['seconds']:.1f} s "
            f"({self.images_seen / max(last['seconds'], 1e-9):,.0f} images/s)"
        )
        if "val_acc" in last:
            text += f"; validation loss {last['val_loss']:.3f}, accuracy {last['val_acc']:.1%}"
        return text

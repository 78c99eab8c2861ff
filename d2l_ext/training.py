"""`Trainer`: the book's training loop (`d2l.Trainer`) with the settings the recipes use, and hooks
where `Callback` pieces plug in, as in fastai's ``Learner``. With its defaults it trains exactly as
`d2l.Trainer` does on the CPU, but takes a GPU where there is one and leaves out a last training
batch of a single example."""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Sequence

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.measure import eval_mode, has_lazy, train_mode

__all__ = [
    "Callback",
    "DivergenceCheck",
    "History",
    "ProgressDisplay",
    "StepLosses",
    "Trainer",
    "evaluate",
    "one_cycle",
    "set_seed",
]


def set_seed(seed: int) -> None:
    """Seed Python's and torch's global generators (a `TensorLoader`'s own: `Trainer.fit`)."""
    random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``loader``; every submodule gets
    its own mode back afterwards, also when the model raises or on Ctrl-C."""
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


def one_cycle(p: float) -> float:
    """Factor of the peak learning rate at fraction ``p`` of the run: linear warm-up from 4% over the
    first fifth (it keeps the first large steps from wrecking the initialization), then cosine
    decay to zero (a short run settles into a minimum instead of bouncing around it)."""
    if p < 0.2:
        return 0.04 + 0.96 * p / 0.2
    return 0.5 * (1 + math.cos(math.pi * (p - 0.2) / 0.8))


# -- the pieces ------------------------------------------------------------------------------------


class Callback:
    """A piece of the loop: each hook reads and writes the trainer's state (``trainer.loss``, ...), and
    ``trainer.should_stop = True`` ends the run. `d2l_ext.runs.fit` stores a piece's ``state_dict()``
    with the run and, replaying it, calls ``load_state_dict(state)`` and ``after_replay``."""

    def before_fit(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_batch(self, trainer: Trainer) -> None: ...
    def after_loss(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...
    def after_replay(self, trainer: Trainer) -> None: ...


class DivergenceCheck(Callback):
    """Stops at the first loss that is not finite or over ``factor`` times the first step's (or 1):
    BN can keep a diverged loss finite. On the CPU each loss is read before its update; on a GPU,
    where a read makes the CPU wait, the first bad step is kept on the device and read every
    ``every`` steps and at each epoch's end."""

    factor = 1000.0

    def before_fit(self, trainer):
        self.every = 1 if trainer.device.type == "cpu" else 50
        self.limit, self.bad_loss = None, torch.zeros((), device=trainer.device)
        self.first_bad = torch.zeros((), dtype=torch.long, device=trainer.device)  # 0: none yet

    def after_loss(self, trainer):
        loss, step = trainer.loss.detach().float(), trainer.train_batch_idx + 1  # steps count from 1
        if self.limit is None:
            self.limit = self.factor * loss.abs().clamp(min=1.0)
        fresh = (self.first_bad == 0) & ~(loss.abs() <= self.limit)  # NaN compares False: caught
        self.first_bad = torch.where(fresh, step, self.first_bad)
        self.bad_loss = torch.where(fresh, loss, self.bad_loss)
        if step % self.every == 0:
            self.check(trainer)

    def check(self, trainer) -> None:
        if step := int(self.first_bad):
            raise FloatingPointError(
                f"The training loss is {float(self.bad_loss):.4g} at step {step} (epoch "
                f"{trainer.epoch + 1}): training diverged. Lower the learning rate (the peak is "
                f"{trainer.base_lrs[0]:g}), or clip the gradients, e.g. "
                "Trainer(gradient_clip_val=1.0). Make the model anew before training it again."
            )

    after_epoch = check


class History(Callback):
    """One record per epoch in ``trainer.history``: steps, training loss and accuracy, seconds,
    images/s, and validation loss and accuracy. The sums stay on the device: no wait for the GPU."""

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


class ProgressDisplay(Callback):
    """Draws the run on the book's board (``model.board``), x in epochs: the mean training loss every
    ``every`` seconds (d2l's board renders the whole figure at each point) and each validation."""

    every = 3.0
    points: list[tuple[float, dict[str, float]]] = []  # what was drawn, for a replay; set anew each fit

    def before_fit(self, trainer):
        self.prepare_board(trainer)
        self.loss_sum, self.steps, self.last, self.points = 0.0, 0, 0.0, []

    @staticmethod
    def prepare_board(trainer) -> None:
        board = trainer.model.board
        if trainer.time_budget is not None or trainer.max_steps is not None:
            board.xlim = None  # the number of epochs is not known in advance
        board.xlabel = "epoch"  # without one, d2l's ProgressBoard.draw reads a missing .x
        board.display = True
        if board.fig is None:  # a dot at every point: a run validated only at its end has one
            # validation point, which a line alone does not show.
            board.fig = d2l.plt.figure(figsize=board.figsize)
            board.fig.gca().set_prop_cycle(marker=["o"], markersize=[4])

    def after_batch(self, trainer):
        self.loss_sum += trainer.loss.detach()  # a tensor: no wait for the GPU until a point
        self.steps += 1
        if trainer.train_seconds - self.last >= self.every:
            self.flush(trainer, {})

    def after_epoch(self, trainer):  # History's record of this epoch
        record = trainer.history[-1]
        self.flush(trainer, {k: record[k] for k in ("val_loss", "val_acc") if k in record})

    def flush(self, trainer, values: dict[str, float]) -> None:
        """Draw the loss of the steps since the last point and ``values``, at the x of now."""
        if self.steps:
            values = {"train_loss": float(self.loss_sum) / self.steps, **values}
            self.loss_sum, self.steps = 0.0, 0
        if values:
            self.points.append((trainer.epochs, values))
            self.draw(trainer.model.board, trainer.epochs, values)
        self.last = trainer.train_seconds

    def state_dict(self) -> dict:
        return {"points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.points = [(x, dict(values)) for x, values in state["points"]]

    def after_replay(self, trainer):
        """Draw the stored run's curve at once (a run trained without a plot: one point per epoch)."""
        self.prepare_board(trainer)
        keys = ("train_loss", "val_loss", "val_acc")
        points = self.points or [
            (float(r["epoch"]), {k: r[k] for k in keys if k in r}) for r in trainer.history
        ]
        if not self.points and points:  # a timed run may stop inside its last epoch
            points[-1] = (trainer.epochs, points[-1][1])
        for i, (x, values) in enumerate(points):
            self.draw(trainer.model.board, x, values, redraw=i == len(points) - 1)

    @staticmethod
    def draw(board: d2l.ProgressBoard, x: float, values: dict[str, float], redraw: bool = True) -> None:
        """Add one point per curve at ``x``; redraw the figure once, after the last (if ``redraw``)."""
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# What each setting allows, and the words for the error. torch's SGD compares its arguments with `<`,
# so a string fails deep inside it, and it checks no weight decay set in a parameter group.
_RULES = {
    "max_epochs": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "max_steps": (lambda v: v is None or _is_int(v) and v >= 1, "None (no limit) or a positive int"),
    "time_budget": (lambda v: v is None or _is_number(v) and v > 0, "None (no limit) or a positive number"),
    "eval_every": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: only at the end)"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gradient_clip_val": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.9 (0: plain SGD)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0, e.g. 5e-4 (0: off)"),
    # The model's, checked by fit. NaN and inf pass: the divergence check stops such a run.
    "lr": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and not v <= 0,
        "a positive number, the model's learning rate, e.g. 0.1",
    ),
    "schedule": (lambda v: v in ("constant", "onecycle"), "'constant' or 'onecycle'"),
    "optimizer": (lambda v: v in (None, "sgd"), "None (the model's own) or 'sgd'"),
    "seed": (_is_int, "an int"),
}


def _check_settings(settings: dict) -> None:
    for name, value in settings.items():
        if name in _RULES and not _RULES[name][0](value):
            raise ValueError(f"{name} must be {_RULES[name][1]}; got {name}={value!r}.")


def _check_callbacks(callbacks: Sequence[Callback]) -> list[Callback]:
    for cb in callbacks:
        if not isinstance(cb, Callback):
            hint = f"; pass an instance, {cb.__name__}()" if isinstance(cb, type) else ""
            raise TypeError(f"callbacks must be Callback objects, got {cb!r}{hint}.")
    return list(callbacks)


# -- the trainer -------------------------------------------------------------------------------------


class Trainer(d2l.Trainer):
    """The book's loop (per batch: forward, loss, backward, optional gradient clipping, a step; per
    epoch: validation, every ``eval_every`` epochs and at the end) with hooks for `Callback` pieces.
    ``train_seconds`` runs from ``clock_start``, validation left out.

    Args:
        max_epochs, num_gpus, gradient_clip_val: the book's; ``num_gpus=None`` takes a GPU if any.
        time_budget, max_steps: stop after this many seconds of training or optimizer steps.
        optimizer: None, the model's ``configure_optimizers`` (the book's plain SGD); ``'sgd'``, SGD
            with ``momentum``, ``nesterov`` and ``weight_decay``, not on biases and BN's 1-D
            parameters (the "no bias decay" of He et al., 2019, "Bag of tricks", section 3.1).
        schedule: ``'constant'`` or ``'onecycle'`` (`one_cycle`, over the run's budget).
        amp: bfloat16 autocast on CUDA (float32's exponent range: no gradient scaling).
        seed: seeds initialization and, for a loader with ``reseed``, the data order.
        plot: draw the run on the book's board (`ProgressDisplay`).
        callbacks: more pieces, after the default ones, e.g. ``[StepLosses()]``.
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
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        amp: bool = False,
        eval_every: int = 1,
        seed: int = 0,
        plot: bool = True,
        callbacks: Sequence[Callback] = (),
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
        return [DivergenceCheck(), History(), *([ProgressDisplay()] if self.plot else [])]

    def prepare_data(self, data) -> None:
        super().prepare_data(data)
        reseed = getattr(self.train_dataloader, "reseed", None)
        if reseed is not None:  # a data object reused across runs gives the same seed the same order
            reseed(self.seed)
        self.num_train_examples = len(getattr(data, "train", ()))
        self.steps_per_epoch = self.num_train_batches
        if self.num_train_batches == 0:
            raise ValueError("The training set has no batches: give the data module some examples.")
        batch_size = getattr(data, "batch_size", None)
        if batch_size and self.num_train_batches > 1 and self.num_train_examples % batch_size == 1:
            warnings.warn(
                f"The last training batch holds one example ({self.num_train_examples} examples in "
                f"batches of {batch_size}), which BatchNorm cannot normalize; every epoch leaves it "
                "out. Choose a batch_size that leaves more than one example over to train on all.",
                stacklevel=3,  # points at the user's fit() call
            )
            self.steps_per_epoch -= 1
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
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # keeps the Parameter objects

    def configure_optimizer(self, model) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return model.configure_optimizers()
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ]
        return torch.optim.SGD(groups, lr=model.lr, momentum=self.momentum, nesterov=self.nesterov)

    def prepare_batch(self, batch):
        X, y = super().prepare_batch(batch)
        return (X.contiguous(memory_format=torch.channels_last) if self.channels_last else X), y

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(self, model, data) -> list[dict[str, float]]:
        if hasattr(model, "lr"):  # the book's models take it unchecked; optimizers need a number
            _check_settings({"lr": model.lr})
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = self.configure_optimizer(model)
        self.base_lrs = [g["lr"] for g in self.optim.param_groups]
        self.epoch = self.train_batch_idx = self.images_seen = 0
        self.train_seconds, self.should_stop = 0.0, False
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
        self.clock_start = time.perf_counter() - self.train_seconds  # a piece that measures moves it on
        for i, batch in enumerate(self.train_dataloader):
            if i == self.steps_per_epoch:  # a last batch of one example (see prepare_data)
                break
            if len(batch[-1]) == 0:  # its mean loss, 0 / 0, would read as a diverged run
                raise ValueError(
                    f"The training data's batch {i + 1} of epoch {self.epoch + 1} is empty: the data "
                    "module's training loader must yield batches of at least one example. Leave "
                    "empty batches out of its get_dataloader."
                )
            self.batch = self.prepare_batch(batch)
            if self.schedule == "onecycle":
                factor = one_cycle(self.progress())
                for group, peak in zip(self.optim.param_groups, self.base_lrs):
                    group["lr"] = peak * factor
            self.run("before_batch")
            self.step()
            self.train_seconds = time.perf_counter() - self.clock_start
            self.should_stop |= self.progress() == 1  # the budget is spent
            self.run("after_batch")
            if self.should_stop:
                break
        self.validate()
        self.run("after_epoch")

    def step(self) -> None:
        """One optimizer step on ``self.batch``, as the book's ``fit_epoch`` takes it."""
        X, y = self.batch
        with self.autocast():
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
            self.val_metrics = evaluate(self.model, self.val_dataloader, self.device, self.channels_last)

    def run(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)

    def progress(self) -> float:
        """Fraction of the run done, by steps (of ``max_steps`` or all epochs) or by time budget."""
        p = self.train_batch_idx / min(self.max_steps or math.inf, self.max_epochs * self.steps_per_epoch)
        if self.time_budget is not None:
            p = max(p, self.train_seconds / self.time_budget)
        return min(p, 1.0)

    @property
    def epochs(self) -> float:
        """Epochs trained, counted by images (a timed run may stop inside an epoch)."""
        if self.num_train_examples:
            return self.images_seen / self.num_train_examples
        return self.train_batch_idx / self.steps_per_epoch

    def summary(self) -> str:
        """One line: epochs, steps, seconds, images/s and the final validation numbers."""
        if not self.history:
            return "No epoch trained yet: call fit(model, data) first."
        last = self.history[-1]
        text = (
            f"{self.epochs:.2f} epochs, {last['steps']} steps in {last['seconds']:.1f} s "
            f"({self.images_seen / max(last['seconds'], 1e-9):,.0f} images/s)"
        )
        if "val_acc" in last:
            text += f"; validation loss {last['val_loss']:.3f}, accuracy {last['val_acc']:.1%}"
        return text

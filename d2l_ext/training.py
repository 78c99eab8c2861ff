"""`Trainer`: the book's training loop (`d2l.Trainer`) with the settings the recipes use, and hooks
where `Callback` pieces plug in, as in fastai's ``Learner``. With its defaults it trains exactly as
`d2l.Trainer` does on the CPU, but takes a GPU where there is one and leaves out a last training
batch of a single example."""

from __future__ import annotations

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

__all__ = ["Callback", "StepLosses", "Trainer", "evaluate", "one_cycle", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's and torch's global generators (a `TensorLoader`'s own: `Trainer.fit`)."""
    random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device=None, channels_last: bool = False) -> dict[str, float]:
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


class Callback:
    """A piece of the loop: each hook reads and writes the trainer's state (``trainer.loss``, ...), and
    ``trainer.should_stop = True`` ends the run. `d2l_ext.runs.fit` stores a piece's ``state_dict()``
    (the attributes named in ``state``) with the run and, replaying it, calls ``load_state_dict`` and
    ``after_replay``."""

    state: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.state}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    def before_fit(self, trainer: Trainer) -> None: ...
    def after_loss(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_replay(self, trainer: Trainer) -> None: ...


class DivergenceCheck(Callback):
    """Stops at the first loss that is not finite or over 1000 times the first step's (or 1): BN can
    keep a diverged loss finite. On the CPU each loss is read before its update; on a GPU, where a
    read makes the CPU wait, the losses are read every ``every`` steps and at each epoch's end."""

    def before_fit(self, trainer):
        self.every = 1 if trainer.device.type == "cpu" else 50
        self.limit, self.unread = None, {}  # unread: step (from 1) -> its loss, on the device

    def after_loss(self, trainer):
        self.unread[trainer.train_batch_idx + 1] = trainer.loss.detach().float()
        if len(self.unread) == self.every:
            self.after_epoch(trainer)

    def after_epoch(self, trainer):
        if not self.unread:
            return
        steps, losses = list(self.unread), torch.stack(list(self.unread.values()))
        self.unread = {}
        if self.limit is None:
            self.limit = 1000 * losses[0].abs().clamp(min=1.0)
        bad = ~(losses.abs() <= self.limit)  # NaN compares False: caught
        if bad.any():
            first = int(bad.int().argmax())
            raise FloatingPointError(
                f"The training loss is {float(losses[first]):.4g} at step {steps[first]} (epoch "
                f"{trainer.epoch + 1}): training diverged. Lower the learning rate (the peak is "
                f"{trainer.base_lrs[0]:g}), or clip the gradients, e.g. "
                "Trainer(gradient_clip_val=1.0). Make the model anew before training it again."
            )


class ProgressDisplay(Callback):
    """Draws the run on the book's board (``model.board``), x in epochs: the mean training loss every
    ``every`` seconds (d2l's board renders the whole figure at each point) and each validation."""

    every, state = 3.0, ("points",)
    points: list[tuple[float, dict[str, float]]] = []  # what was drawn, for a replay; set anew each fit

    def before_fit(self, trainer):
        self.loss_sum, self.steps, self.last, self.points = 0.0, 0, 0.0, []

    def after_batch(self, trainer):
        self.loss_sum += trainer.loss.detach()  # a tensor: no wait for the GPU until a point
        self.steps += 1
        if trainer.train_seconds - self.last >= self.every:
            self.add_point(trainer, {})

    def after_epoch(self, trainer):
        self.add_point(trainer, {k: v for k, v in trainer.history[-1].items() if k.startswith("val_")})

    def add_point(self, trainer, values: dict[str, float]) -> None:
        """Draw the mean loss of the steps since the last point and ``values``, at the x of now."""
        if self.steps:
            values = {"train_loss": float(self.loss_sum) / self.steps, **values}
        if values:
            self.points.append((trainer.epochs, values))
            _draw(trainer, self.points[-1:])
        self.loss_sum, self.steps, self.last = 0.0, 0, trainer.train_seconds

    def after_replay(self, trainer):
        """Draw the stored run at once; a run trained without a plot, one point per epoch."""
        keys = ("train_loss", "val_loss", "val_acc")
        points = self.points or [(r["epoch"], {k: r[k] for k in keys if k in r}) for r in trainer.history]
        if not self.points and points:  # a timed run may stop inside its last epoch
            points[-1] = (trainer.epochs, points[-1][1])
        _draw(trainer, points)


def _draw(trainer, points: list[tuple[float, dict[str, float]]]) -> None:
    """Add each point of each curve to the model's board, and redraw the figure once, after the last."""
    board = trainer.model.board
    if trainer.time_budget is not None or trainer.max_steps is not None:
        board.xlim = None  # the number of epochs is not known in advance
    board.xlabel = "epoch"  # without one, d2l's ProgressBoard.draw reads a missing .x
    if board.fig is None:  # a dot at every point: a run validated only at its end has one
        # validation point, which a line alone does not show.
        board.fig = d2l.plt.figure(figsize=board.figsize)
        board.fig.gca().set_prop_cycle(marker=["o"], markersize=[4])
    curves = [(x, value, key) for x, values in points for key, value in values.items()]
    for i, (x, value, key) in enumerate(curves):
        board.display = i == len(curves) - 1
        board.draw(x, value, key, every_n=1)
    board.display = True


class StepLosses(Callback):
    """The training loss of every optimizer step, in ``losses`` (Python floats), for curves finer
    than one point per epoch. Reading each loss makes the CPU wait for the GPU at every step."""

    state = ("losses",)

    def before_fit(self, trainer):
        self.losses: list[float] = []

    def after_batch(self, trainer):
        self.losses.append(trainer.loss.item())


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# What each setting allows, and the words for the error. torch's SGD compares its arguments with `<`,
# so a string fails deep inside it, and it checks no weight decay set in a parameter group.
_RULES = {
    "max_epochs": (lambda v: type(v) is int and v >= 1, "a positive int"),
    "max_steps": (lambda v: v is None or type(v) is int and v >= 1, "None (no limit) or a positive int"),
    "time_budget": (
        lambda v: v is None or _number(v) and 0 < v < math.inf,
        "None (no limit) or a positive number",
    ),
    "eval_every": (lambda v: type(v) is int and v >= 0, "an int >= 0 (0: only at the end)"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gradient_clip_val": (lambda v: _number(v) and 0 <= v < math.inf, "a number >= 0 (0: off)"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.9 (0: plain SGD)"),
    "weight_decay": (lambda v: _number(v) and 0 <= v < math.inf, "a number >= 0, e.g. 5e-4 (0: off)"),
    # The model's, checked by fit. NaN and inf pass: the divergence check stops such a run.
    "lr": (lambda v: _number(v) and not v <= 0, "a positive number, the model's learning rate, e.g. 0.1"),
    "schedule": (lambda v: v in ("constant", "onecycle"), "'constant' or 'onecycle'"),
    "optimizer": (lambda v: v in (None, "sgd"), "None (the model's own) or 'sgd'"),
    "seed": (lambda v: type(v) is int, "an int"),
}


def _check_settings(settings: dict) -> None:
    for name, value in settings.items():
        if name in _RULES and not _RULES[name][0](value):
            raise ValueError(f"{name} must be {_RULES[name][1]}; got {name}={value!r}.")


class Trainer(d2l.Trainer):
    """The book's loop (per batch: forward, loss, backward, optional gradient clipping, a step; per
    epoch: validation every ``eval_every`` epochs and at the end, and a record in ``history``) with
    hooks for `Callback` pieces (``callbacks``, e.g. ``[StepLosses()]``), that stops after
    ``max_epochs``, ``max_steps`` or ``time_budget`` seconds of training (``train_seconds``, from
    ``clock_start``). ``num_gpus=None`` takes a GPU if any; ``optimizer='sgd'``: SGD with
    ``momentum``, ``nesterov`` and ``weight_decay``, not on biases and BN's 1-D parameters ("no bias
    decay", He et al., 2019, "Bag of tricks"); ``schedule='onecycle'``: `one_cycle`, over the run's
    budget; ``amp``: bfloat16 autocast on CUDA (float32's exponent range: no gradient scaling);
    ``seed`` seeds the initialization and, for a loader with ``reseed``, the data order."""

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
        for cb in callbacks:
            if not isinstance(cb, Callback):
                hint = f"; pass an instance, {cb.__name__}()" if isinstance(cb, type) else ""
                raise TypeError(f"callbacks must be Callback objects, got {cb!r}{hint}.")
        self.extra_callbacks = list(callbacks)
        self.gpus = [d2l.gpu(i) for i in range(min(num_gpus, d2l.num_gpus()))]
        self.history: list[dict[str, float]] = []

    @property
    def device(self) -> torch.device:
        return self.gpus[0] if self.gpus else torch.device("cpu")

    def default_callbacks(self) -> list[Callback]:
        return [DivergenceCheck(), *([ProgressDisplay()] if self.plot else [])]

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

    def autocast(self) -> torch.autocast:
        on_cuda = self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and on_cuda)

    def fit(self, model, data) -> list[dict[str, float]]:
        if hasattr(model, "lr"):  # the book's models take it unchecked; optimizers need a number
            _check_settings({"lr": model.lr})
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = self.configure_optimizer(model)
        self.base_lrs = [g["lr"] for g in self.optim.param_groups]
        self.epoch = self.train_batch_idx = self.images_seen = 0
        self.train_seconds, self.should_stop, self.history = 0.0, False, []
        self.callbacks = [*self.default_callbacks(), *self.extra_callbacks]
        with train_mode(model):  # every submodule gets its own mode back, also on Ctrl-C
            self.run("before_fit")
            for self.epoch in range(self.max_epochs):
                self.fit_epoch()
                if self.should_stop:
                    break
        return self.history

    def fit_epoch(self) -> None:
        start_seconds, start_images = self.train_seconds, self.images_seen
        self.loss_sum = self.correct = 0  # summed on the device by `step`: no wait for the GPU
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
                for group, peak in zip(self.optim.param_groups, self.base_lrs):
                    group["lr"] = peak * one_cycle(self.progress())
            self.step()
            self.train_seconds = time.perf_counter() - self.clock_start
            self.should_stop |= self.progress() == 1  # the budget is spent
            self.run("after_batch")
            if self.should_stop:
                break
        last = self.should_stop or self.epoch + 1 == self.max_epochs
        due = last or self.eval_every and (self.epoch + 1) % self.eval_every == 0
        images = self.images_seen - start_images
        record = {
            "epoch": self.epoch + 1,
            "steps": self.train_batch_idx,
            "train_loss": float(self.loss_sum) / images,
            "train_acc": float(self.correct) / images,
            "seconds": self.train_seconds,
            "images_per_s": images / max(self.train_seconds - start_seconds, 1e-9),
        }
        if due and self.val_dataloader is not None:
            metrics = evaluate(self.model, self.val_dataloader, self.device, self.channels_last)
            record.update(val_loss=metrics["loss"], val_acc=metrics["acc"])
        self.history.append(record)
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
        self.loss_sum += self.loss.detach() * len(y)
        self.correct += (self.Y_hat.detach().argmax(1) == y).sum()

    def training_loss(self, Y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            return F.cross_entropy(Y_hat, y, label_smoothing=self.label_smoothing)
        return self.model.loss(Y_hat, y)

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

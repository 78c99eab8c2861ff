"""d2l's Trainer, shaped for the machine it runs on.

`Trainer` keeps the book's API (``Trainer(max_epochs, num_gpus).fit(model, data)``, the model's
``loss``, ``configure_optimizers`` and animated ``board``) and adds what a live demo on a laptop
CPU and a full run on a GPU need: a wall-clock budget or a fixed number of steps, a one-cycle
learning-rate schedule that follows the budget, SGD with Nesterov momentum and weight decay,
label smoothing, channels-last, mixed precision and data kept on the GPU, seeding, and a
per-epoch ``history`` with throughput. With its defaults it trains exactly as `d2l.Trainer`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import Any

import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext.data import balanced_subset

__all__ = ["Trainer", "evaluate", "has_lazy", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's, torch's (and CUDA's) generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def has_lazy(model: nn.Module) -> bool:
    """True while some parameter of ``model`` is still uninitialized (a Lazy module before its first call)."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    tta_flip: bool = False,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``loader``.

    ``tta_flip`` averages the logits of each image and its mirror image (test-time augmentation).
    """
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for X, y in loader:
        if device is not None:
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        logits = model(X).float()
        if tta_flip:
            logits = (logits + model(X.flip(-1)).float()) / 2
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    return {"loss": total_loss / n, "acc": correct / n}


class Trainer(d2l.Trainer):
    """`d2l.Trainer` with budgets, schedules and the speed-ups of the run presets.

    Args:
        max_epochs: epochs to train (an upper bound when a budget is set).
        num_gpus: GPUs to use; None takes one if CUDA has one (the book asks for it by number).
        gradient_clip_val: clip the gradient norm to this value (0: off), as in the book.
        time_budget: stop after this many seconds of training (None: no limit).
        max_steps: stop after this many optimizer steps (None: no limit).
        optimizer: None uses ``model.configure_optimizers()`` (the book: plain SGD at ``model.lr``);
            ``'sgd'`` (with ``momentum``, ``nesterov``), ``'adam'`` or ``'adamw'`` use ``model.lr``
            as the peak rate, with ``weight_decay`` on weights but not on biases and BN parameters.
        schedule: ``'constant'`` or ``'onecycle'`` (linear warm-up over the first ``warmup``
            fraction of the run, then cosine decay to zero; the run's length is its budget).
        label_smoothing: passed to cross-entropy during training.
        channels_last: NHWC memory format, faster for convolutions on CPUs and tensor cores.
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        eval_every: evaluate on the validation set every this many epochs and at the end
            (0: only at the end, the cheapest for a timed demo).
        tta_flip: average predictions over each image and its mirror image when evaluating.
        seed: seeds initialization (Lazy modules materialize in ``fit``) and the shuffling.
        plot: animate the book's progress board.
        probe_every: every this many seconds of training, measure accuracy on ``probe_size``
            class-balanced test images; recorded in ``probes`` as (seconds, accuracy), and not
            counted as training time (for accuracy-against-time curves and time to accuracy).
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
        tta_flip: bool = False,
        seed: int = 0,
        plot: bool = True,
        probe_every: float | None = None,
        probe_size: int = 2000,
    ):
        if num_gpus is None:
            num_gpus = min(1, d2l.num_gpus())
        if schedule not in ("constant", "onecycle"):
            raise ValueError(f"schedule must be 'constant' or 'onecycle', got {schedule!r}.")
        if optimizer not in (None, "sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be None, 'sgd', 'adam' or 'adamw', got {optimizer!r}.")
        self.save_hyperparameters()
        self.gpus = [d2l.gpu(i) for i in range(min(num_gpus, d2l.num_gpus()))]
        self.history: list[dict[str, float]] = []
        self.probes: list[tuple[float, float]] = []

    @property
    def device(self) -> torch.device:
        return self.gpus[0] if self.gpus else torch.device("cpu")

    # -- set-up -----------------------------------------------------------------------------
    def prepare_data(self, data) -> None:
        super().prepare_data(data)
        self.probe_loader = None
        if self.probe_every and self.val_dataloader is not None:
            val = self.val_dataloader
            idx = balanced_subset(val.targets, min(self.probe_size, len(val.targets)))
            self.probe_loader = copy.copy(val)
            self.probe_loader.images, self.probe_loader.targets = val.images[idx], val.targets[idx]
        if self.gpus:  # keep the in-memory data set on the GPU: no host-to-device copy per batch
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
            model.to(memory_format=torch.channels_last)
        if self.time_budget is not None or self.max_steps is not None:
            model.board.xlim = None  # the epoch count is not known in advance
        model.board.xlabel = "epoch"  # without one, d2l's ProgressBoard.draw reads a missing .x
        model.board.display = self.plot

    def configure_optimizer(self, model) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return model.configure_optimizers()
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=model.lr, momentum=self.momentum, nesterov=self.nesterov)
        opt = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return opt(groups, lr=model.lr)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, model, data) -> list[dict[str, float]]:
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = self.configure_optimizer(model)
        self.base_lrs = [g["lr"] for g in self.optim.param_groups]
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        self.history, self.train_seconds, self.images_seen, self.done = [], 0.0, 0, False
        self.probes, self.next_probe, self.probe_seconds = [], self.probe_every, 0.0
        self.total_steps = self.max_steps or self.max_epochs * self.num_train_batches
        for self.epoch in range(self.max_epochs):
            self.fit_epoch()
            if self.done:
                break
        return self.history

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is set."""
        p = self.train_batch_idx / self.total_steps
        if self.time_budget is not None:
            p = max(p, self.train_seconds / self.time_budget)
        return min(p, 1.0)

    def lr_factor(self, p: float) -> float:
        if self.schedule == "constant":
            return 1.0
        if p < self.warmup:
            return 0.04 + 0.96 * p / self.warmup
        return 0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup)))

    def training_loss(self, Y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            return F.cross_entropy(Y_hat, y, label_smoothing=self.label_smoothing)
        return self.model.loss(Y_hat, y)

    def _stop(self) -> bool:
        if self.max_steps is not None and self.train_batch_idx >= self.max_steps:
            return True
        return self.time_budget is not None and self.train_seconds >= self.time_budget

    def fit_epoch(self) -> None:
        model, device = self.model, self.device
        model.train()
        use_amp = self.amp and device.type == "cuda"
        start, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        epoch_start_seconds = self.train_seconds
        for X, y in self.train_dataloader:
            if self._stop():
                break
            factor = self.lr_factor(self.progress())
            for g, base in zip(self.optim.param_groups, self.base_lrs):
                g["lr"] = base * factor
            X, y = self.prepare_batch((X, y))
            if self.channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                Y_hat = model(X)
                loss = self.training_loss(Y_hat.float(), y)
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_clip_val > 0:
                self.clip_gradients(self.gradient_clip_val, model)
            self.optim.step()
            self.train_batch_idx += 1
            seen += len(y)
            self.images_seen += len(y)
            loss_sum += loss.detach() * len(y)  # stays a tensor: no device sync per step
            correct += (Y_hat.detach().argmax(1) == y).sum()
            self.train_seconds = epoch_start_seconds + time.perf_counter() - start
            if self.probe_loader is not None and self.train_seconds >= self.next_probe:
                probe_start = time.perf_counter()
                acc = evaluate(model, self.probe_loader, self.tta_flip, device, self.channels_last)["acc"]
                self.probes.append((self.train_seconds, acc))
                self.next_probe += self.probe_every
                self.probe_seconds += time.perf_counter() - probe_start
                start += time.perf_counter() - probe_start  # probing is not training time
        if seen == 0:
            self.done = True
            return
        self.done = self._stop() or self.epoch + 1 == self.max_epochs
        record = {
            "epoch": self.epoch + 1,
            "steps": self.train_batch_idx,
            "train_loss": float(loss_sum) / seen,
            "train_acc": float(correct) / seen,
            "seconds": self.train_seconds,
            "images_per_s": seen / max(self.train_seconds - epoch_start_seconds, 1e-9),
        }
        if self.val_dataloader is not None and (
            self.done or (self.eval_every and (self.epoch + 1) % self.eval_every == 0)
        ):
            val = evaluate(model, self.val_dataloader, self.tta_flip, device, self.channels_last)
            record.update(val_loss=val["loss"], val_acc=val["acc"])
            self.val_batch_idx += self.num_val_batches
        self.history.append(record)
        self.draw(record)

    def draw(self, record: dict[str, Any]) -> None:
        """One point per epoch on the book's board (drawing per batch costs a live demo seconds)."""
        board, x = self.model.board, record["epoch"]
        keys = [k for k in ("train_loss", "val_loss", "val_acc") if k in record]
        for i, key in enumerate(keys):
            board.display = self.plot and i == len(keys) - 1  # redraw once, after the last point
            board.draw(x, record[key], key, every_n=1)
        board.display = self.plot

    def summary(self) -> str:
        """One line: epochs, steps, seconds, images/s and the final validation numbers."""
        last = self.history[-1]
        text = (
            f"{last['epoch']} epochs, {last['steps']} steps in {last['seconds']:.1f} s "
            f"({self.images_seen / max(last['seconds'], 1e-9):,.0f} images/s)"
        )
        if "val_acc" in last:
            text += f"; validation loss {last['val_loss']:.3f}, accuracy {last['val_acc']:.1%}"
        return text

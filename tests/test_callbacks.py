"""The pieces of d2l_ext.training, each alone on a stand-in trainer, and the loop's hooks."""

from types import SimpleNamespace

import pytest
import torch
from d2l import torch as d2l
from torch import nn

from d2l_ext.training import Callback, DivergenceCheck, History, ProgressDisplay, StepLosses, Trainer


def stand_in(**state):
    """The trainer state a piece reads, without a model or data."""
    defaults = dict(train_batch_idx=0, train_seconds=0.0, epoch=0, should_stop=False, base_lrs=[0.1])
    return SimpleNamespace(**{"device": torch.device("cpu"), **defaults, **state})


def feed(check, losses, **state):
    """Run ``check`` over one epoch with these step losses; the trainer counts the steps."""
    trainer = stand_in(**state)
    check.before_fit(trainer)
    for loss in losses:
        trainer.loss = torch.tensor(loss)
        check.after_loss(trainer)
        trainer.train_batch_idx += 1
    check.after_epoch(trainer)
    return trainer


def test_divergence_check_passes_finite_losses_and_names_the_first_bad_step():
    trainer = feed(DivergenceCheck(), [2.3, 1e3, 0.1])  # within 1000x the first loss
    assert trainer.train_batch_idx == 3
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 3 \(epoch 2\).*peak is 0.1"):
        feed(DivergenceCheck(), [2.3, 2.0, float("inf"), 3.0], epoch=1)
    with pytest.raises(FloatingPointError, match=r"loss is 2301 at step 2"):
        feed(DivergenceCheck(), [2.3, 2301.0])
    with pytest.raises(FloatingPointError, match=r"loss is 1001 at step 2"):  # a small first loss counts as 1
        feed(DivergenceCheck(), [0.01, 1001.0])


def test_divergence_check_read_every_few_steps_still_names_the_first_bad_step():
    check, trainer = DivergenceCheck(), stand_in()
    check.before_fit(trainer)
    check.every = 4  # as on a GPU, where it reads every 50 steps
    for loss in [2.0, float("nan"), 2.0]:  # read at step 4 only
        trainer.loss = torch.tensor(loss)
        check.after_loss(trainer)
        trainer.train_batch_idx += 1
    trainer.loss = torch.tensor(float("inf"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 2 "):
        check.after_loss(trainer)


def test_history_records_each_epoch_from_the_steps_it_saw():
    history, trainer = History(), stand_in(val_metrics={"loss": 0.5, "acc": 0.75})
    history.before_fit(trainer)
    history.before_epoch(trainer)
    for Y_hat, y, loss in [([[1.0, 0.0], [0.0, 1.0]], [0, 0], 1.0), ([[0.0, 1.0]], [1], 4.0)]:
        trainer.batch, trainer.Y_hat = (None, torch.tensor(y)), torch.tensor(Y_hat)
        trainer.loss = torch.tensor(loss)
        trainer.train_batch_idx += 1
        trainer.train_seconds += 0.5
        history.after_batch(trainer)
    history.after_epoch(trainer)
    assert trainer.history == [
        {"epoch": 1, "steps": 2, "train_loss": 2.0, "train_acc": 2 / 3, "seconds": 1.0,
         "images_per_s": 3.0, "val_loss": 0.5, "val_acc": 0.75}
    ]  # fmt: skip


class Board:
    """Stands in for d2l's ProgressBoard: records the points and whether each one redraws."""

    def __init__(self):
        self.display, self.fig, self.calls = True, "a figure", []

    def draw(self, x, y, label, every_n=1):
        self.calls.append((x, y, label, self.display))


def test_progress_display_replays_its_points_or_else_the_history_redrawing_once():
    board = Board()
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_acc": 0.5},
        {"epoch": 2, "train_loss": 1.5, "val_acc": 0.75},
    ]
    trainer = stand_in(
        model=SimpleNamespace(board=board), time_budget=60, max_steps=None, history=history, epochs=1.25
    )
    ProgressDisplay().after_replay(trainer)
    # A run trained without a plot: a point per epoch, the last where a timed run stopped.
    assert board.calls == [
        (1.0, 2.0, "train_loss", False), (1.0, 0.5, "val_acc", False),
        (1.25, 1.5, "train_loss", False), (1.25, 0.75, "val_acc", True),
    ]  # fmt: skip
    live, board.calls = ProgressDisplay(), []
    live.load_state_dict({"points": [(0.5, {"train_loss": 2.0}), (1.0, {"train_loss": 1.0, "val_acc": 0.5})]})
    live.after_replay(trainer)
    assert board.calls == [
        (0.5, 2.0, "train_loss", False), (1.0, 1.0, "train_loss", False), (1.0, 0.5, "val_acc", True),
    ]  # fmt: skip
    assert board.xlim is None and board.display  # a timed run's epochs are not known in advance


# -- the loop's hooks --------------------------------------------------------------------------------


class Linear(d2l.Classifier):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(4, 3)


def toy_data(batches=3):
    g = torch.Generator().manual_seed(0)
    train = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(batches)]
    return SimpleNamespace(train_dataloader=lambda: train, val_dataloader=lambda: train[:1])


class Log(Callback):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda trainer: self.calls.append((name, trainer.train_batch_idx))
        return super().__getattribute__(name)


def test_the_loop_calls_each_hook_in_its_place():
    log = Log()
    Trainer(max_epochs=2, plot=False, callbacks=[log]).fit(Linear(), toy_data(batches=2))
    epoch = lambda k: [  # noqa: E731
        ("before_epoch", k), ("before_batch", k), ("after_loss", k), ("after_batch", k + 1),
        ("before_batch", k + 1), ("after_loss", k + 1), ("after_batch", k + 2), ("after_epoch", k + 2),
    ]  # fmt: skip
    assert log.calls == [("before_fit", 0), *epoch(0), *epoch(2), ("after_fit", 4)]


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def after_batch(self, trainer):
        trainer.should_stop = trainer.train_batch_idx >= self.steps


def test_a_piece_stops_the_run_and_the_last_epoch_is_validated():
    trainer = Trainer(max_epochs=10, eval_every=0, plot=False, callbacks=[StopAfter(4)])
    history = trainer.fit(Linear(), toy_data(batches=3))
    assert trainer.train_batch_idx == 4 and [r["steps"] for r in history] == [3, 4]
    assert "val_acc" in history[-1] and "val_acc" not in history[0]


def test_the_default_pieces_follow_the_settings_and_a_piece_class_is_refused():
    names = lambda t: [type(cb).__name__ for cb in t.default_callbacks()]  # noqa: E731
    assert names(Trainer()) == ["DivergenceCheck", "History", "ProgressDisplay"]
    assert names(Trainer(plot=False)) == ["DivergenceCheck", "History"]
    with pytest.raises(TypeError, match=r"StepLosses\(\)"):
        Trainer(callbacks=[StepLosses])

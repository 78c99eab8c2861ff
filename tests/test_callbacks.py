"""The pieces of d2l_ext.training, each alone on a stand-in trainer, and the loop's hooks."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from d2l import torch as d2l
from torch import nn

from d2l_ext.training import (
    Budget,
    Callback,
    ChannelsLast,
    DivergenceCheck,
    History,
    MixedPrecision,
    OneCycle,
    ProgressDisplay,
    StepLosses,
    Trainer,
)


def stand_in(**state):
    """The trainer state a piece reads, without a model or data."""
    defaults = dict(train_batch_idx=0, train_seconds=0.0, epoch=0, should_stop=False, base_lrs=[0.1])
    return SimpleNamespace(**{"device": torch.device("cpu"), **defaults, **state})


def test_budget_stops_at_max_steps_or_seconds_whichever_comes_first():
    steps, seconds = Budget(max_steps=3), Budget(seconds=1.5)
    for idx, (t, expected) in enumerate([(0.5, False), (1.0, False), (1.5, True)], start=1):
        trainer = stand_in(train_batch_idx=idx, train_seconds=t)
        steps.after_batch(trainer)
        assert trainer.should_stop == (idx == 3)
        trainer.should_stop = False
        seconds.after_batch(trainer)
        assert trainer.should_stop == expected


def test_one_cycle_sets_each_groups_rate_from_the_progress():
    w = torch.zeros(2, requires_grad=True)
    optim = torch.optim.SGD([{"params": [w], "lr": 0.4}, {"params": [], "lr": 0.2}])
    trainer = stand_in(optim=optim, base_lrs=[0.4, 0.2], progress=lambda: 0.6)
    OneCycle(warmup=0.2).before_batch(trainer)  # halfway through the cosine: half the peak
    assert [g["lr"] for g in optim.param_groups] == pytest.approx([0.2, 0.1])
    assert OneCycle(0.2).factor(0.1) == pytest.approx(0.04 + 0.96 * 0.5)


def test_channels_last_changes_the_layout_of_the_images_only():
    X, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    trainer = stand_in(batch=(X, y))
    ChannelsLast().before_batch(trainer)
    X2, y2 = trainer.batch
    assert X2.is_contiguous(memory_format=torch.channels_last) and torch.equal(X2, X) and y2 is y


def test_mixed_precision_does_nothing_on_the_cpu():
    trainer = stand_in(autocast="unchanged")
    MixedPrecision().before_fit(trainer)
    assert trainer.autocast == "unchanged"


def test_mixed_precision_asks_for_bfloat16_autocast_on_cuda():
    # Checked by its settings, so that it runs without a GPU too (there torch disables the context).
    trainer = stand_in(device=torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available ... Disabling autocast"
        MixedPrecision().before_fit(trainer)
    assert trainer.autocast.device == "cuda" and trainer.autocast.fast_dtype == torch.bfloat16


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
    check = DivergenceCheck(every=4)
    trainer = stand_in()
    check.before_fit(trainer)
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


def test_step_losses_keeps_one_float_per_step():
    rec, trainer = StepLosses(), stand_in()
    rec.before_fit(trainer)
    for loss in [2.5, 1.25]:
        trainer.loss = torch.tensor(loss)
        rec.after_batch(trainer)
    assert rec.losses == [2.5, 1.25]


class Board:
    """Stands in for d2l's ProgressBoard: records the points and whether each one redraws."""

    def __init__(self):
        self.display, self.calls = True, []

    def draw(self, x, y, label, every_n=1):
        self.calls.append((x, y, label, self.display))


def test_progress_display_draws_one_point_per_curve_and_redraws_once():
    board = Board()
    ProgressDisplay.draw(board, 2, {"train_loss": 1.0, "val_loss": 1.5, "val_acc": 0.5})
    assert board.calls == [
        (2, 1.0, "train_loss", False),
        (2, 1.5, "val_loss", False),
        (2, 0.5, "val_acc", True),
    ]


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


def test_a_piece_class_instead_of_an_instance_is_refused():
    with pytest.raises(TypeError, match=r"StepLosses\(\)"):
        Trainer(callbacks=[StepLosses])


def test_the_default_pieces_follow_the_settings():
    names = lambda t: [type(cb).__name__ for cb in t.default_callbacks()]  # noqa: E731
    assert names(Trainer()) == ["DivergenceCheck", "History", "ProgressDisplay"]
    everything = dict(schedule="onecycle", channels_last=True, amp=True, plot=False)
    assert names(Trainer(max_steps=5, **everything)) == [
        "DivergenceCheck", "History", "Budget", "OneCycle", "ChannelsLast", "MixedPrecision",
    ]  # fmt: skip

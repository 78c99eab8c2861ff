"""d2l_ext.training: the book's Trainer by default, plus budgets, schedules and speed-ups; its pieces,
each alone on a stand-in trainer; and the loop's hooks."""

import contextlib
import math
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext import FashionMNIST, Trainer, evaluate, set_seed
from d2l_ext.training import Callback, DivergenceCheck, ProgressDisplay, StepLosses, one_cycle


class TinyCNN(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(8, kernel_size=3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(num_classes),
        )  # fmt: skip


def small_data(**kw):
    return FashionMNIST(batch_size=64, train_subset=1000, val_subset=500, verbose=False, **kw)


def test_defaults_train_exactly_as_the_books_trainer_also_on_a_data_object_used_before():
    # On the CPU, where the book's Trainer runs by default: a GPU's kernels may add up in a
    # different order from one run to the next, and then no two runs agree to the last bit.
    theirs, data = TinyCNN(), small_data()
    set_seed(0)
    theirs.apply_init([next(iter(data.train_dataloader()))[0][:2]], d2l.init_cnn)
    theirs.board.display = False
    d2l.Trainer(max_epochs=1).fit(theirs, data)
    ours = TinyCNN()
    Trainer(max_epochs=1, num_gpus=0, plot=False).fit(ours, data)  # the seed alone sets the order
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


class TimedCNN(TinyCNN):
    """A TinyCNN on a fake `time.perf_counter`, where seconds pass only in its forward passes."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.now = 0.0
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)

    def forward(self, X):
        self.now += 0.125  # a power of two: sums of them are exact
        return super().forward(X)


def test_a_timed_run_stops_at_the_step_that_reaches_its_budget_and_plots_as_it_goes(monkeypatch):
    monkeypatch.setattr(ProgressDisplay, "every", 1.0)
    model, rec = TimedCNN(monkeypatch), StepLosses()
    trainer = Trainer(max_epochs=1000, time_budget=2.5, eval_every=0, callbacks=[rec])  # plot=True
    history = trainer.fit(model, small_data())
    assert trainer.train_batch_idx == 20 and trainer.train_seconds == 2.5  # 20 steps of 0.125 s
    assert [r["steps"] for r in history] == [16, 20] and [r["seconds"] for r in history] == [2.0, 2.5]
    assert history[0]["images_per_s"] == 1000 / 2.0
    assert "val_acc" in history[-1] and "val_acc" not in history[0]
    # 1,000 images and 4 steps of 64 into the second epoch: counted by images, not by epochs begun
    assert trainer.summary().startswith("1.26 epochs, 20 steps in 2.5 s (502 images/s); validation")
    assert "fit" in Trainer().summary()  # a trainer that never ran says so
    assert len(rec.losses) == 20 and all(isinstance(v, float) for v in rec.losses)
    # 64 images a step, 1,000 an epoch: a loss point every 8 steps (1 s), and at the end the last 4
    # steps' loss with the validation numbers.
    (live,) = [cb for cb in trainer.callbacks if isinstance(cb, ProgressDisplay)]
    assert [(x, sorted(v)) for x, v in live.points] == [
        (512 / 1000, ["train_loss"]),
        (1000 / 1000, ["train_loss"]),
        (1256 / 1000, ["train_loss", "val_acc", "val_loss"]),
    ]
    ax = model.board.fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train_loss", "val_loss", "val_acc"]
    # Each validation curve is one point: every point is drawn as a dot, and the legend shows the
    # dot, so no entry stands for nothing.
    newest = ax.lines[-3:]  # d2l's board plots every curve anew at each redraw
    assert list(newest[0].get_xdata()) == [x for x, _ in live.points]
    assert [len(line.get_xdata()) for line in newest[1:]] == [1, 1]
    assert all(line.get_marker() == "o" and line.get_markersize() > 0 for line in newest)
    assert all(handle.get_marker() == "o" for handle in legend.legend_handles)
    assert newest[2].get_ydata()[0] == history[-1]["val_acc"]


def test_evaluate_matches_a_manual_pass_and_restores_every_submodule_mode():
    data, model = small_data(), TinyCNN()
    plain = evaluate(model, data.val_dataloader())  # the Lazy layers take their shapes here
    X, y = data.val.images[:, None].float() / 255, data.val.targets
    with torch.no_grad():
        logits = model.eval()(X)
    assert plain["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert plain["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(5, 5))  # the last one raises
    model[1].eval()  # frozen BN statistics while the rest trains
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        evaluate(model, [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))])
    assert model.training and model[0].training and not model[1].training and model[2].training


class TinyCNN64(TinyCNN):
    """TinyCNN in float64, where the rounding of the two layouts' kernels stays far below tolerance."""

    def __init__(self):
        super().__init__()
        self.net = self.net.to(torch.float64)

    def forward(self, X):
        return self.net(X.double())


def test_channels_last_takes_the_same_steps():
    # Only the memory layout differs. In float32 the kernels' different summation orders leave
    # differences of 1e-4 after one step (more with more threads), so compare in float64.
    a, b, rec = TinyCNN64(), TinyCNN64(), StepLosses()
    Trainer(max_epochs=1, max_steps=3, plot=False, callbacks=[rec]).fit(a, small_data())
    Trainer(max_epochs=1, max_steps=3, plot=False, channels_last=True, callbacks=[rec]).fit(b, small_data())
    assert len(rec.losses) == 3  # each fit starts a new record
    assert b.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=name)
    X, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    X2, y2 = Trainer(channels_last=True, num_gpus=0).prepare_batch((X, y))  # the images' layout only
    assert X2.is_contiguous(memory_format=torch.channels_last) and torch.equal(X2, X) and y2 is y


def test_amp_is_bfloat16_autocast_on_cuda_only():
    assert not Trainer(amp=True, num_gpus=0).autocast()._enabled
    on_cuda, plain = Trainer(amp=True), Trainer(amp=False)
    on_cuda.gpus = plain.gpus = [torch.device("cuda")]  # its settings only: runs without a GPU too
    assert not plain.autocast()._enabled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available ... Disabling autocast"
        autocast = on_cuda.autocast()
    assert autocast.device == "cuda" and autocast.fast_dtype == torch.bfloat16
    assert autocast._enabled == torch.cuda.is_available()  # torch turns it off without CUDA


def test_the_fast_recipe_learns_fashion_mnist():
    data = FashionMNIST(batch_size=128, normalize=True, train_subset=5000, val_subset=1000, verbose=False)
    trainer = Trainer(max_epochs=100, max_steps=120, optimizer="sgd", momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, plot=False)  # fmt: skip
    model = TinyCNN(lr=0.1)
    trainer.fit(model, data)
    assert trainer.history[-1]["val_acc"] > 0.70  # chance is 0.10
    assert math.isfinite(trainer.history[-1]["train_loss"])
    assert "120 steps" in trainer.summary() and "accuracy" in trainer.summary()
    decay, no_decay = trainer.optim.param_groups  # no weight decay on biases and BN's scale and shift
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0 and decay["nesterov"]
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    Y_hat, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(
        trainer.training_loss(Y_hat, y), F.cross_entropy(Y_hat, y, label_smoothing=0.1)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "cosine"}, "onecycle"),
        ({"optimizer": "adam"}, "'sgd'"),
        # momentum="0.9" used to fail inside torch.optim.SGD with "'<' not supported between ...",
        # and weight_decay=-1 trained on, pushing the weights away from zero.
        ({"momentum": "0.9"}, r"momentum must be a number in \[0, 1\), e\.g\. 0\.9 .*; got momentum='0\.9'"),
        ({"weight_decay": -1}, r"weight_decay must be a number >= 0, e\.g\. 5e-4 .*; got weight_decay=-1"),
        # settings that would train nothing
        ({"max_epochs": 0}, "max_epochs must be a positive int"),
        ({"max_steps": 0}, "max_steps must be None .* or a positive int"),
        ({"max_steps": -5}, "max_steps"),
        ({"time_budget": 0}, "time_budget must be None .* or a positive number"),
        ({"time_budget": -1.0}, "time_budget"),
        ({"eval_every": -1}, "eval_every"),
    ],
)
def test_bad_settings_are_refused_when_the_trainer_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**{"optimizer": "sgd", **kwargs})


@pytest.mark.parametrize("optimizer", [None, "sgd"])
def test_a_learning_rate_given_as_a_string_is_refused_before_training(optimizer):
    # It used to fail inside torch.optim.SGD with "'<' not supported between 'str' and 'float'".
    trainer = Trainer(max_epochs=1, optimizer=optimizer, plot=False)
    with pytest.raises(ValueError, match=r"lr must be a positive number.*e\.g\. 0\.1.*; got lr='0\.1'"):
        trainer.fit(TinyCNN(lr="0.1"), small_data())
    assert not hasattr(trainer, "optim")  # refused before anything was built


@pytest.mark.parametrize("lr, loss", [(float("nan"), "nan"), (1e6, r"\d\.\d+e\+\d+")])
def test_a_diverging_run_stops_at_its_first_bad_loss(lr, loss):
    # lr=nan makes the first update NaN; lr=1e6 makes the second loss about 1e12, finite (BN keeps
    # it so) but a thousand times the first. Both used to train to the end at chance accuracy.
    trainer = Trainer(max_epochs=3, plot=False)
    with pytest.raises(FloatingPointError, match=rf"loss is {loss} at step 2 \(epoch 1\).*learning rate"):
        trainer.fit(TinyCNN(lr=lr), small_data())
    # On the CPU the check stops the bad step before its update; on a GPU it reads its flag at
    # the end of the epoch (16 steps) at the latest, sparing a wait for the GPU at every step.
    assert trainer.train_batch_idx == (1 if trainer.device.type == "cpu" else 16)


class HalfRateBiasesMLP(TinyCNN):
    """BatchNorm1d after a dense layer, which cannot normalize a batch of one example; and two
    parameter groups, each with its own peak rate."""

    def __init__(self, lr):
        super().__init__(lr)
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(), nn.LazyLinear(10)
        )

    def configure_optimizers(self):
        weights = [p for p in self.parameters() if p.ndim > 1]
        rest = [p for p in self.parameters() if p.ndim <= 1]
        return torch.optim.SGD([{"params": weights}, {"params": rest, "lr": self.lr / 2}], lr=self.lr)


def test_onecycle_anneals_each_group_over_the_steps_that_run_leaving_out_a_last_batch_of_one():
    assert one_cycle(0.0) == pytest.approx(0.04) and one_cycle(0.1) == pytest.approx(0.04 + 0.96 * 0.5)
    assert one_cycle(0.2) == pytest.approx(1.0) and one_cycle(0.6) == pytest.approx(0.5)
    assert one_cycle(1.0) == pytest.approx(0.0)
    data = FashionMNIST(batch_size=333, train_subset=1000, val_subset=500, verbose=False)
    trainer = Trainer(max_epochs=2, max_steps=1000, schedule="onecycle", plot=False)
    with pytest.warns(UserWarning, match="one example") as caught:
        trainer.fit(HalfRateBiasesMLP(lr=0.2), data)
    assert len([w for w in caught if "one example" in str(w.message)]) == 1  # said once, not per epoch
    assert trainer.train_batch_idx == 6 and trainer.images_seen == 2 * 999
    assert [r["steps"] for r in trainer.history] == [3, 6]
    # 2 epochs of 3 batches of 333 run 6 steps, not max_steps=1000 nor 8: the rate of the last step
    factor = one_cycle(5 / 6)
    assert [g["lr"] for g in trainer.optim.param_groups] == pytest.approx([0.2 * factor, 0.1 * factor])


@pytest.mark.parametrize(
    "losses, every, match",
    [
        ([2.3, 1e3, 0.1], 1, None),  # within 1000x the first loss
        ([2.3, 2.0, float("inf"), 3.0], 1, r"loss is inf at step 3 \(epoch 2\).*peak is 0.1"),
        ([2.3, 2301.0], 1, r"loss is 2301 at step 2"),
        ([0.01, 1001.0], 1, r"loss is 1001 at step 2"),  # a small first loss counts as 1
        ([2.0, float("nan"), 2.0, float("inf")], 4, r"loss is nan at step 2 "),  # read at step 4 only
        ([2.0, float("nan"), 2.0], 4, r"loss is nan at step 2 "),  # read at the epoch's end
    ],
)
def test_divergence_check_names_the_first_bad_step_also_when_read_every_few_steps(losses, every, match):
    check = DivergenceCheck()
    trainer = SimpleNamespace(device=torch.device("cpu"), train_batch_idx=0, epoch=1, base_lrs=[0.1])
    check.before_fit(trainer)
    check.every = every  # as on a GPU, where it reads every 50 steps
    with pytest.raises(FloatingPointError, match=match) if match else contextlib.nullcontext():
        for loss in losses:
            trainer.loss = torch.tensor(loss)
            check.after_loss(trainer)
            trainer.train_batch_idx += 1
        check.after_epoch(trainer)


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
    trainer = SimpleNamespace(
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
    """Each hook's call with the step count, and each step's loss, correct predictions and size."""

    def __init__(self):
        self.calls, self.steps = [], []

    def __getattribute__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda trainer: self.log(name, trainer)
        return super().__getattribute__(name)

    def log(self, name, trainer):
        self.calls.append((name, trainer.train_batch_idx))
        if name == "after_batch":
            y = trainer.batch[1]
            self.steps.append((trainer.loss.item(), (trainer.Y_hat.argmax(1) == y).sum().item(), len(y)))


def test_the_loop_calls_each_hook_in_its_place_and_records_each_epoch():
    log = Log()
    history = Trainer(max_epochs=2, plot=False, callbacks=[log]).fit(Linear(), toy_data(batches=2))
    epoch = lambda k: [  # noqa: E731
        ("after_loss", k), ("after_batch", k + 1), ("after_loss", k + 1), ("after_batch", k + 2),
        ("after_epoch", k + 2),
    ]  # fmt: skip
    assert log.calls == [("before_fit", 0), *epoch(0), *epoch(2)]
    (loss_a, correct_a, n_a), (loss_b, correct_b, n_b) = log.steps[:2]  # the first epoch's
    assert history[0]["train_loss"] == pytest.approx((loss_a * n_a + loss_b * n_b) / (n_a + n_b))
    assert history[0]["train_acc"] == (correct_a + correct_b) / (n_a + n_b)
    assert [r["epoch"] for r in history] == [1, 2] and [r["steps"] for r in history] == [2, 4]
    assert "val_acc" in history[0]  # eval_every=1 by default, as in the book


def test_an_empty_batch_is_named_not_called_divergence():
    # Its mean loss is NaN (0 / 0), which the divergence check used to report as "training
    # diverged. Lower the learning rate".
    data = toy_data(batches=4)
    X, y = data.train_dataloader()[0]
    data.train_dataloader().insert(2, (X[:0], y[:0]))  # an empty batch third, as a faulty loader yields
    trainer = Trainer(max_epochs=2, plot=False)
    with pytest.raises(ValueError, match=r"batch 3 of epoch 1 is empty.*at least one example"):
        trainer.fit(Linear(), data)
    assert trainer.train_batch_idx == 2


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def after_batch(self, trainer):
        trainer.should_stop = trainer.train_batch_idx >= self.steps


def test_a_piece_stops_the_run_and_the_last_epoch_is_validated():
    model, data = Linear(), toy_data(batches=3)
    trainer = Trainer(max_epochs=10, eval_every=0, plot=False, callbacks=[StopAfter(4)])
    history = trainer.fit(model, data)
    assert trainer.train_batch_idx == 4 and [r["steps"] for r in history] == [3, 4]
    assert "val_acc" not in history[0]
    expected = evaluate(model, data.val_dataloader())
    assert (history[-1]["val_loss"], history[-1]["val_acc"]) == (expected["loss"], expected["acc"])


def test_the_default_pieces_follow_the_settings_and_a_piece_class_is_refused():
    names = lambda t: [type(cb).__name__ for cb in t.default_callbacks()]  # noqa: E731
    assert names(Trainer()) == ["DivergenceCheck", "ProgressDisplay"]
    assert names(Trainer(plot=False)) == ["DivergenceCheck"]
    with pytest.raises(TypeError, match=r"StepLosses\(\)"):
        Trainer(callbacks=[StepLosses])

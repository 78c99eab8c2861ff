"""d2l_ext.training.Trainer: the book's Trainer by default, plus budgets, schedules and speed-ups."""

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
from d2l_ext.training import ProgressDisplay, StepLosses, one_cycle


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


def test_defaults_train_exactly_as_the_books_trainer():
    # On the CPU, where the book's Trainer runs by default: a GPU's kernels may add up in a
    # different order from one run to the next, and then no two runs agree to the last bit.
    ours = TinyCNN()
    Trainer(max_epochs=1, num_gpus=0, plot=False).fit(ours, small_data())

    theirs = TinyCNN()
    data = small_data()
    set_seed(0)
    theirs.apply_init([next(iter(data.train_dataloader()))[0][:2]], d2l.init_cnn)
    theirs.board.display = False
    d2l.Trainer(max_epochs=1).fit(theirs, data)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_max_steps_is_exact_and_history_and_step_losses_are_recorded():
    rec = StepLosses()
    trainer = Trainer(max_epochs=100, max_steps=20, plot=False, callbacks=[rec])
    history = trainer.fit(TinyCNN(), small_data())
    assert trainer.train_batch_idx == 20 and len(history) == 2  # 16 steps per epoch
    assert history[-1]["steps"] == 20 and {"val_loss", "val_acc", "images_per_s"} <= history[-1].keys()
    assert "val_acc" in history[0]  # eval_every=1 by default, as in the book
    # 1,000 images and 4 steps of 64 into the second epoch: counted by images, not by epochs begun
    assert trainer.summary().startswith("1.26 epochs, 20 steps")
    assert "fit" in Trainer().summary()  # a trainer that never ran says so
    assert len(rec.losses) == 20 and all(isinstance(v, float) for v in rec.losses)
    sizes = [64] * 15 + [40]  # the first epoch: 1,000 images in batches of 64
    mean = sum(v * n for v, n in zip(rec.losses, sizes)) / 1000
    assert history[0]["train_loss"] == pytest.approx(mean, rel=1e-6)
    Trainer(max_epochs=1, max_steps=3, plot=False, callbacks=[rec]).fit(TinyCNN(), small_data())
    assert len(rec.losses) == 3  # each fit starts a new record


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
    model = TimedCNN(monkeypatch)
    trainer = Trainer(max_epochs=1000, time_budget=2.5, eval_every=0)  # plot=True
    history = trainer.fit(model, small_data())
    assert trainer.train_batch_idx == 20 and trainer.train_seconds == 2.5  # 20 steps of 0.125 s
    assert [r["steps"] for r in history] == [16, 20] and [r["seconds"] for r in history] == [2.0, 2.5]
    assert history[0]["images_per_s"] == 1000 / 2.0
    assert "val_acc" in history[-1] and "val_acc" not in history[0]
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


def test_evaluate_matches_a_manual_pass():
    data, model = small_data(), TinyCNN()
    plain = evaluate(model, data.val_dataloader())  # the Lazy layers take their shapes here
    X, y = data.val.images[:, None].float() / 255, data.val.targets
    with torch.no_grad():
        logits = model.eval()(X)
    assert plain["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert plain["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


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
    a, b = TinyCNN64(), TinyCNN64()
    Trainer(max_epochs=1, max_steps=3, plot=False).fit(a, small_data())
    Trainer(max_epochs=1, max_steps=3, plot=False, channels_last=True).fit(b, small_data())
    assert b.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=name)
    X, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    X2, y2 = Trainer(channels_last=True, num_gpus=0).prepare_batch((X, y))  # the images' layout only
    assert X2.is_contiguous(memory_format=torch.channels_last) and torch.equal(X2, X) and y2 is y


def test_amp_is_bfloat16_autocast_on_cuda_only():
    assert isinstance(Trainer(amp=True, num_gpus=0).autocast(), contextlib.nullcontext)
    on_cuda, plain = Trainer(amp=True), Trainer(amp=False)
    on_cuda.gpus = plain.gpus = [torch.device("cuda")]  # its settings only: runs without a GPU too
    assert isinstance(plain.autocast(), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available ... Disabling autocast"
        autocast = on_cuda.autocast()
    assert autocast.device == "cuda" and autocast.fast_dtype == torch.bfloat16


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


class TinyMLP(TinyCNN):
    """BatchNorm1d after a dense layer: BN that cannot normalize a batch of one example."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(), nn.LazyLinear(10)
        )


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


def test_an_empty_batch_is_named_not_called_divergence():
    # Its mean loss is NaN (0 / 0), which the divergence check used to report as "training
    # diverged. Lower the learning rate".
    batches = list(small_data().train_dataloader())[:4]
    X, y = batches[0]
    train = [*batches[:2], (X[:0], y[:0]), *batches[2:]]  # an empty batch third, as a faulty loader yields
    data = SimpleNamespace(train_dataloader=lambda: train, val_dataloader=lambda: None)
    trainer = Trainer(max_epochs=2, plot=False)
    with pytest.raises(ValueError, match=r"batch 3 of epoch 1 is empty.*at least one example"):
        trainer.fit(TinyCNN(), data)
    assert trainer.train_batch_idx == 2


class HalfRateBiases(TinyCNN):
    def configure_optimizers(self):  # two groups, each with its own peak rate
        weights = [p for p in self.parameters() if p.ndim > 1]
        rest = [p for p in self.parameters() if p.ndim <= 1]
        return torch.optim.SGD([{"params": weights}, {"params": rest, "lr": self.lr / 2}], lr=self.lr)


def test_onecycle_warms_up_then_decays_to_zero_over_the_steps_that_really_run_for_each_group():
    assert one_cycle(0.0) == pytest.approx(0.04) and one_cycle(0.1) == pytest.approx(0.04 + 0.96 * 0.5)
    assert one_cycle(0.2) == pytest.approx(1.0) and one_cycle(0.6) == pytest.approx(0.5)
    assert one_cycle(1.0) == pytest.approx(0.0)
    # 2 epochs of 16 batches run 32 steps, not max_steps=1000: the rate must still anneal to zero.
    trainer = Trainer(max_epochs=2, max_steps=1000, schedule="onecycle", plot=False)
    trainer.fit(HalfRateBiases(lr=0.2), small_data())
    assert trainer.train_batch_idx == 32
    factor = one_cycle(31 / 32)  # the rate of the last step
    assert [g["lr"] for g in trainer.optim.param_groups] == pytest.approx([0.2 * factor, 0.1 * factor])
    assert factor < 0.01


def test_a_final_batch_of_one_example_is_dropped_with_a_warning():
    data = FashionMNIST(batch_size=333, train_subset=1000, val_subset=500, verbose=False)
    trainer = Trainer(max_epochs=2, schedule="onecycle", plot=False)
    with pytest.warns(UserWarning, match="one example") as caught:
        trainer.fit(TinyMLP(), data)
    assert len([w for w in caught if "one example" in str(w.message)]) == 1  # said once, not per epoch
    assert trainer.train_batch_idx == 6 and trainer.images_seen == 2 * 999
    assert [r["steps"] for r in trainer.history] == [3, 6]


def test_the_same_seed_trains_the_same_model_on_a_shared_data_object():
    data, settings = small_data(), dict(max_epochs=1, max_steps=5, num_gpus=0, plot=False)  # CPU: see above
    a, b = TinyCNN(), TinyCNN()
    Trainer(**settings).fit(a, data)
    Trainer(**settings).fit(b, data)  # the same data object, already shuffled once
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


class Raises(nn.Module):
    def forward(self, X):
        raise RuntimeError("boom")


def test_evaluate_restores_every_submodule_mode_when_the_model_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), Raises())
    model[1].eval()  # frozen BN statistics while the rest trains
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))])
    assert model.training and model[0].training and not model[1].training and model[2].training

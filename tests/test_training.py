"""d2l_ext.training.Trainer: the book's Trainer by default, plus budgets, schedules and speed-ups."""

import math

import pytest
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext import FashionMNIST, Trainer, evaluate, set_seed
from d2l_ext.training import OneCycle, ProgressDisplay, StepLosses


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


def test_max_steps_is_exact_and_history_is_recorded():
    trainer = Trainer(max_epochs=100, max_steps=20, plot=False)
    history = trainer.fit(TinyCNN(), small_data())
    assert trainer.train_batch_idx == 20 and len(history) == 2  # 16 steps per epoch
    assert history[-1]["steps"] == 20 and {"val_loss", "val_acc", "images_per_s"} <= history[-1].keys()
    assert "val_acc" in history[0]  # eval_every=1 by default, as in the book
    # 1,000 images and 4 steps of 64 into the second epoch: counted by images, not by epochs begun
    assert trainer.summary().startswith("1.26 epochs, 20 steps")


class FakeClock:
    """Seconds that pass only while a model computes: each forward pass takes ``tick`` seconds."""

    def __init__(self, tick=0.125):  # a power of two: sums of ticks are exact
        self.now, self.tick = 0.0, tick

    def __call__(self):
        return self.now


class TimedCNN(TinyCNN):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def forward(self, X):
        self.clock.now += self.clock.tick
        return super().forward(X)


def test_time_budget_stops_at_the_step_that_reaches_it_whatever_the_speed():
    clock = FakeClock()
    trainer = Trainer(max_epochs=1000, time_budget=2.5, eval_every=0, plot=False, clock=clock)
    history = trainer.fit(TimedCNN(clock), small_data())
    assert trainer.train_batch_idx == 20 and trainer.train_seconds == 2.5  # 20 steps of 0.125 s
    assert [r["steps"] for r in history] == [16, 20] and [r["seconds"] for r in history] == [2.0, 2.5]
    assert history[0]["images_per_s"] == 1000 / 2.0
    assert "val_acc" in history[-1] and "val_acc" not in history[0]


def test_onecycle_factor_warms_up_then_decays_to_zero():
    factor = OneCycle(warmup=0.2).factor
    assert factor(0.0) == pytest.approx(0.04) and factor(0.2) == pytest.approx(1.0)
    assert factor(0.6) == pytest.approx(0.5) and factor(1.0) == pytest.approx(0.0)


def test_sgd_groups_exempt_biases_and_bn_from_weight_decay():
    model = TinyCNN()
    model(torch.zeros(2, 1, 28, 28))
    opt = Trainer(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4).configure_optimizer(model)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0 and decay["nesterov"]
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_label_smoothing_loss_is_torchs():
    trainer = Trainer(label_smoothing=0.1)
    Y_hat, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(
        trainer.training_loss(Y_hat, y), F.cross_entropy(Y_hat, y, label_smoothing=0.1)
    )


def test_evaluate_matches_a_manual_pass_and_flip_averages():
    data = small_data()
    model = TinyCNN()
    Trainer(max_epochs=1, plot=False).fit(model, data)
    model.eval()
    device = next(model.parameters()).device
    X, y = (data.val.images[:, None].float() / 255).to(device), data.val.targets.to(device)
    with torch.no_grad():
        logits = model(X)
    plain = evaluate(model, data.val_dataloader())
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


def test_the_fast_recipe_learns_fashion_mnist():
    data = FashionMNIST(batch_size=128, normalize=True, train_subset=5000, val_subset=1000, verbose=False)
    trainer = Trainer(max_epochs=100, max_steps=120, optimizer="sgd", momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, plot=False)  # fmt: skip
    trainer.fit(TinyCNN(lr=0.1), data)
    assert trainer.history[-1]["val_acc"] > 0.70  # chance is 0.10
    assert math.isfinite(trainer.history[-1]["train_loss"])
    assert "120 steps" in trainer.summary() and "accuracy" in trainer.summary()


@pytest.mark.parametrize(
    "kwargs, match", [({"schedule": "cosine"}, "onecycle"), ({"optimizer": "adam"}, "'sgd'")]
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum": "0.9"}, r"momentum must be a number in \[0, 1\), e\.g\. 0\.9 .*; got momentum='0\.9'"),
        ({"weight_decay": -1}, r"weight_decay must be a number >= 0, e\.g\. 5e-4 .*; got weight_decay=-1"),
    ],
)
def test_optimizer_settings_are_refused_when_the_trainer_is_made(kwargs, match):
    # momentum="0.9" used to fail inside torch.optim.SGD with "'<' not supported between ...", and
    # weight_decay=-1 trained on, pushing the weights away from zero.
    with pytest.raises(ValueError, match=match):
        Trainer(optimizer="sgd", **kwargs)


@pytest.mark.parametrize("optimizer", [None, "sgd"])
def test_a_learning_rate_given_as_a_string_is_refused_before_training(optimizer):
    # It used to fail inside torch.optim.SGD with "'<' not supported between 'str' and 'float'".
    trainer = Trainer(max_epochs=1, optimizer=optimizer, plot=False)
    with pytest.raises(ValueError, match=r"lr must be a positive number.*e\.g\. 0\.1.*; got lr='0\.1'"):
        trainer.fit(TinyCNN(lr="0.1"), small_data())
    assert not hasattr(trainer, "optim")  # refused before anything was built


# -- fixes: each test below failed on the Trainer before its fix ----------------------------------


class TinyMLP(d2l.Classifier):
    """BatchNorm1d after a dense layer: BN that cannot normalize a batch of one example."""

    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
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


class WithEmptyBatch(d2l.DataModule):
    """Four real training batches with an empty one (no examples) third, as a faulty loader yields."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def get_dataloader(self, train):
        if not train:
            return self.data.val_dataloader()
        batches = list(self.data.train_dataloader())[:4]
        X, y = batches[0]
        return [*batches[:2], (X[:0], y[:0]), *batches[2:]]


def test_an_empty_batch_is_named_not_called_divergence():
    # Its mean loss is NaN (0 / 0), which the divergence check used to report as "training
    # diverged. Lower the learning rate".
    trainer = Trainer(max_epochs=2, plot=False)
    with pytest.raises(ValueError, match=r"batch 3 of epoch 1 is empty.*at least one example"):
        trainer.fit(TinyCNN(), WithEmptyBatch(small_data()))
    assert trainer.train_batch_idx == 2


def test_step_losses_records_the_loss_of_every_step():
    rec = StepLosses()
    trainer = Trainer(max_epochs=2, max_steps=20, plot=False, callbacks=[rec])
    trainer.fit(TinyCNN(), small_data())
    assert len(rec.losses) == 20 and all(isinstance(v, float) for v in rec.losses)
    sizes = [64] * 15 + [40]  # the first epoch: 1,000 images in batches of 64
    mean = sum(v * n for v, n in zip(rec.losses, sizes)) / 1000
    assert trainer.history[0]["train_loss"] == pytest.approx(mean, rel=1e-6)
    Trainer(max_epochs=1, max_steps=3, plot=False, callbacks=[rec]).fit(TinyCNN(), small_data())
    assert len(rec.losses) == 3  # each fit starts a new record


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_epochs": 0}, "max_epochs must be a positive int"),
        ({"max_steps": 0}, "max_steps must be None .* or a positive int"),
        ({"max_steps": -5}, "max_steps"),
        ({"time_budget": 0}, "time_budget must be None .* or a positive number"),
        ({"time_budget": -1.0}, "time_budget"),
        ({"eval_every": -1}, "eval_every"),
        ({"warmup": 1.0}, "warmup"),
    ],
)
def test_settings_that_would_train_nothing_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**kwargs)


def test_summary_of_a_trainer_that_never_ran_says_so():
    assert "fit" in Trainer().summary()


def test_onecycle_is_sized_by_the_steps_that_really_run():
    # 2 epochs of 16 batches run 32 steps, not max_steps=1000: the rate must still anneal to zero.
    model = TinyCNN()
    trainer = Trainer(max_epochs=2, max_steps=1000, optimizer="sgd", schedule="onecycle", plot=False)
    trainer.fit(model, small_data())
    assert trainer.train_batch_idx == 32
    last_factor = trainer.optim.param_groups[0]["lr"] / model.lr  # the rate of the last step
    assert last_factor == pytest.approx(OneCycle(trainer.warmup).factor(31 / 32)) and last_factor < 0.01


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


def test_the_live_plot_gains_a_point_every_few_seconds_of_training(monkeypatch):
    drawn = []
    record = staticmethod(lambda board, x, values: drawn.append((x, values)))
    monkeypatch.setattr(ProgressDisplay, "draw", record)
    clock = FakeClock()
    live = ProgressDisplay(every=1.0)
    trainer = Trainer(
        max_epochs=1000, time_budget=2.5, eval_every=0, plot=False, clock=clock, callbacks=[live]
    )
    trainer.fit(TimedCNN(clock), small_data())
    # 20 steps of 0.125 s, 64 images each, 1,000 per epoch: a loss point every 8 steps (1 s), and at
    # the end the last 4 steps' loss with the validation numbers.
    assert [x for x, _ in drawn] == [512 / 1000, 1000 / 1000, 1256 / 1000]
    assert [sorted(v) for _, v in drawn] == [
        ["train_loss"],
        ["train_loss"],
        ["train_loss", "val_acc", "val_loss"],
    ]
    assert drawn[-1][1]["val_acc"] == trainer.history[-1]["val_acc"]


def test_the_live_plot_shows_a_run_validated_only_at_its_end():
    clock = FakeClock()
    model = TimedCNN(clock)
    trainer = Trainer(max_epochs=1000, time_budget=2.5, eval_every=0, clock=clock)  # plot=True
    trainer.fit(model, small_data())
    ax = model.board.fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train_loss", "val_loss", "val_acc"]
    # Each validation curve is one point: every point is drawn as a dot, and the legend shows the
    # dot, so no entry stands for nothing.
    newest = ax.lines[-3:]  # d2l's board plots every curve anew at each redraw
    assert len(newest[0].get_xdata()) > 1 and [len(line.get_xdata()) for line in newest[1:]] == [1, 1]
    assert all(line.get_marker() == "o" and line.get_markersize() > 0 for line in newest)
    assert all(handle.get_marker() == "o" for handle in legend.legend_handles)
    assert newest[2].get_ydata()[0] == trainer.history[-1]["val_acc"]


def test_the_live_plot_refuses_a_bad_interval():
    with pytest.raises(ValueError, match="seconds"):
        ProgressDisplay(every=0)

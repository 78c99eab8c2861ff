"""d2l_ext.training.Trainer: the book's Trainer by default, plus budgets, schedules and speed-ups."""

import math

import pytest
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_ext import FashionMNIST, Trainer, evaluate, set_seed


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
    ours = TinyCNN()
    Trainer(max_epochs=1, plot=False).fit(ours, small_data())

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


def test_time_budget_stops_training():
    trainer = Trainer(max_epochs=1000, time_budget=0.5, eval_every=0, plot=False)
    history = trainer.fit(TinyCNN(), small_data())
    assert 0.5 <= trainer.train_seconds < 30 and trainer.epoch < 999
    assert "val_acc" in history[-1] and all("val_acc" not in r for r in history[:-1])


def test_onecycle_factor_warms_up_then_decays_to_zero():
    trainer = Trainer(schedule="onecycle", warmup=0.2)
    assert trainer.lr_factor(0.0) == pytest.approx(0.04) and trainer.lr_factor(0.2) == pytest.approx(1.0)
    assert trainer.lr_factor(0.6) == pytest.approx(0.5) and trainer.lr_factor(1.0) == pytest.approx(0.0)
    assert Trainer().lr_factor(0.7) == 1.0


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
    X, y = data.val.images[:, None].float() / 255, data.val.targets
    with torch.no_grad():
        logits = model(X)
        flipped = (logits + model(X.flip(-1))) / 2
    plain = evaluate(model, data.val_dataloader())
    assert plain["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert plain["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    tta = evaluate(model, data.val_dataloader(), tta_flip=True)
    assert tta["acc"] == pytest.approx((flipped.argmax(1) == y).float().mean().item())


def test_channels_last_takes_the_same_step():
    # Only the memory layout differs; over many steps rounding differences grow, so compare one step.
    a, b = TinyCNN(), TinyCNN()
    Trainer(max_epochs=1, max_steps=1, plot=False).fit(a, small_data())
    Trainer(max_epochs=1, max_steps=1, plot=False, channels_last=True).fit(b, small_data())
    assert b.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=name)


def test_the_fast_recipe_learns_fashion_mnist():
    data = FashionMNIST(batch_size=128, normalize=True, train_subset=5000, val_subset=1000, verbose=False)
    trainer = Trainer(max_epochs=100, max_steps=120, optimizer="sgd", momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, plot=False)  # fmt: skip
    trainer.fit(TinyCNN(lr=0.1), data)
    assert trainer.history[-1]["val_acc"] > 0.70  # chance is 0.10
    assert math.isfinite(trainer.history[-1]["train_loss"])
    assert "120 steps" in trainer.summary() and "accuracy" in trainer.summary()


@pytest.mark.parametrize(
    "kwargs, match", [({"schedule": "cosine"}, "onecycle"), ({"optimizer": "lion"}, "adamw")]
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**kwargs)


def test_probes_measure_accuracy_without_counting_as_training_time():
    trainer = Trainer(max_epochs=3, probe_every=0.05, probe_size=200, eval_every=0, plot=False)
    trainer.fit(TinyCNN(), small_data())
    assert len(trainer.probes) >= 2
    seconds = [t for t, _ in trainer.probes]
    assert seconds == sorted(seconds) and seconds[-1] <= trainer.train_seconds
    assert all(0.0 <= acc <= 1.0 for _, acc in trainer.probes)
    assert (
        len(trainer.probe_loader.targets) == 200
        and (torch.bincount(trainer.probe_loader.targets) == 20).all()
    )

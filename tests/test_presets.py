"""d2l_ext.presets: one knob, every experiment defined under every preset, settings that construct."""

import inspect

import pytest
import torch

from d2l_ext import FashionMNIST, Trainer, presets
from d2l_ext.presets import EXPERIMENTS, PRESETS, current_preset, experiment


def test_default_is_demo_on_cpu_and_full_on_gpu(monkeypatch):
    monkeypatch.delenv("D2L_EXT_PRESET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_preset() == "demo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert current_preset() == "full"


@pytest.mark.parametrize("value", ["ci", "demo", "full", " CI "])
def test_env_var_chooses(monkeypatch, value):
    monkeypatch.setenv("D2L_EXT_PRESET", value)
    assert current_preset() == value.strip().lower()


def test_unknown_preset_says_what_exists(monkeypatch):
    monkeypatch.setenv("D2L_EXT_PRESET", "fast")
    with pytest.raises(ValueError, match="use one of ci, demo, full"):
        current_preset()


def test_unknown_experiment_lists_known():
    with pytest.raises(KeyError, match="resnet"):
        experiment("resnet19")


def test_printed_summary_names_preset_settings_and_time(capsys):
    cfg = experiment("resnet", "demo")
    out = capsys.readouterr().out
    assert "'resnet' under preset 'demo'" in out and "D2L_EXT_PRESET" in out
    assert "time_budget=60" in out and f"about {cfg.seconds:.0f} s" in out and "why:" in out


def test_experiment_returns_copies():
    a = experiment("resnet", "ci", verbose=False)
    a.trainer["max_steps"] = 1
    assert experiment("resnet", "ci", verbose=False).trainer["max_steps"] != 1


ALL = [(name, preset) for name in EXPERIMENTS for preset in PRESETS]


@pytest.mark.parametrize("name, preset", ALL)
def test_every_setting_is_accepted(name, preset):
    cfg = experiment(name, preset, verbose=False)
    inspect.signature(FashionMNIST).bind(**cfg.data)
    Trainer(**cfg.trainer)
    assert cfg.seconds > 0 and "lr" in cfg.model


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_ci_is_small_fixed_and_bounded(name):
    cfg = experiment(name, "ci", verbose=False)
    assert cfg.data.get("train_subset", 60_000) <= 10_000 and cfg.data.get("val_subset") == 1_000
    assert "time_budget" not in cfg.trainer  # a step count, so results do not depend on the machine
    assert cfg.seconds <= 15


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_demo_uses_the_whole_data_set_within_a_minute(name):
    cfg = experiment(name, "demo", verbose=False)
    assert "train_subset" not in cfg.data and "val_subset" not in cfg.data
    assert cfg.trainer.get("time_budget", 0) <= 60 and cfg.seconds <= 90


def test_full_is_the_books_run():
    for name, resize in (("resnet", 96), ("densenet", 96), ("bn_lenet", (28, 28))):
        cfg = experiment(name, "full", verbose=False)
        assert cfg.data.get("resize", (28, 28)) == resize and cfg.data["batch_size"] == 128
        assert cfg.trainer["max_epochs"] == 10 and "time_budget" not in cfg.trainer
    assert experiment("resnet", "full", verbose=False).model["arch"] == (
        (2, 64),
        (2, 128),
        (2, 256),
        (2, 512),
    )
    assert experiment("densenet", "full", verbose=False).model["arch"] == (4, 4, 4, 4)


def test_module_documents_every_preset():
    for name in PRESETS:
        assert f"``{name}``" in presets.__doc__

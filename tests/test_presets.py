"""d2l_ext.presets: one knob, every experiment defined under every preset, settings that construct,
and each accuracy floor defined once, in its recipe."""

import ast
import contextlib
import dataclasses
import importlib
import inspect
import json
from pathlib import Path

import pytest
import torch
from IPython.core.inputtransformer2 import TransformerManager

from d2l_ext import FashionMNIST, Trainer, presets
from d2l_ext.presets import EXPERIMENTS, PRESETS, Experiment, Recipe, current_preset, experiment

REPO = Path(__file__).resolve().parents[1]


def test_default_is_demo_on_cpu_and_full_on_gpu(monkeypatch):
    monkeypatch.delenv("D2L_EXT_PRESET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_preset() == "demo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert current_preset() == "full"


@pytest.mark.parametrize("value", ["ci", "demo", "full", " CI "])
def test_env_var_chooses_a_documented_preset(monkeypatch, value):
    monkeypatch.setenv("D2L_EXT_PRESET", value)
    assert current_preset() == value.strip().lower() and f"``{current_preset()}``" in presets.__doc__


def test_unknown_preset_names_the_value_as_given_what_exists_and_the_default(monkeypatch):
    monkeypatch.setenv("D2L_EXT_PRESET", " Fast")
    with pytest.raises(ValueError, match="=' Fast' is not a preset; use one of ci, demo, full, or unset"):
        current_preset()


def test_printed_summary_names_preset_settings_and_time(capsys):
    cfg = experiment("resnet", "demo")
    out = capsys.readouterr().out
    assert "'resnet' under preset 'demo'" in out and "D2L_EXT_PRESET" in out
    assert "time_budget=60" in out and f"about {cfg.seconds:.0f} s" in out and "why:" in out
    assert f"at least {100 * cfg.floor:g}% on every run" in out and f"about {100 * cfg.target:g}%" in out


@pytest.mark.parametrize("name, preset", [(name, preset) for name in EXPERIMENTS for preset in PRESETS])
def test_every_experiment_builds_and_keeps_its_presets_promise(name, preset):
    cfg = experiment(name, preset, verbose=False)
    inspect.signature(FashionMNIST).bind(**cfg.data)
    Trainer(**cfg.trainer)
    assert cfg.seconds > 0 and (cfg.name, cfg.preset) == (name, preset)
    if name in ("bn_lenet", "resnet", "resnext", "densenet"):  # benchmarked: a floor, and a demo target
        assert 0.5 <= cfg.floor < 1 and (preset != "demo" or cfg.floor < cfg.target < 1)
    if preset == "ci":  # small and bounded; a step count, so that results do not depend on the machine
        assert cfg.data.get("train_subset", 60_000) <= 10_000 and cfg.data.get("val_subset") == 1_000
        assert "time_budget" not in cfg.trainer and cfg.seconds <= 15
    if preset == "demo":  # the whole data set, within a minute
        assert "train_subset" not in cfg.data and "val_subset" not in cfg.data
        assert cfg.trainer.get("time_budget", 0) <= 60 and cfg.seconds <= 90
    kwargs = dict(cfg.model)
    if "depths" in cfg.extra:  # the degradation runs: arch from the depth and widths, as notebook 02
        kwargs["arch"] = tuple((cfg.extra["depths"][0], w) for w in cfg.extra["widths"])
    for path in EXPERIMENTS[name].models:
        module, cls = path.rsplit(".", 1)
        Model = getattr(importlib.import_module(module), cls)
        inspect.signature(Model).bind(**kwargs)
        assert Model(**kwargs).lr == cfg.model["lr"]


def test_full_is_the_books_run():
    archs = {"resnet": ((2, 64), (2, 128), (2, 256), (2, 512)), "densenet": (4, 4, 4, 4), "bn_lenet": None}
    for name, resize in (("resnet", 96), ("densenet", 96), ("bn_lenet", (28, 28))):
        cfg = experiment(name, "full", verbose=False)
        assert cfg.data.get("resize", (28, 28)) == resize and cfg.data["batch_size"] == 128
        assert cfg.trainer["max_epochs"] == 10 and "time_budget" not in cfg.trainer
        assert cfg.model.get("arch") == archs[name]


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({}, None, None),  # the same recipe without a change is fine
        (dict(data=dict(batch_sise=128)), TypeError, "'probe', preset 'full'.*did you mean 'batch_size'"),
        (dict(trainer=dict(time_budjet=60)), TypeError, "not an argument of Trainer.*'time_budget'"),
        (dict(trainer=dict(flop=1)), TypeError, "it takes max_epochs, num_gpus"),
        (dict(seconds=0), ValueError, "seconds must be positive"),
        (dict(floor=88), ValueError, r"floor is an accuracy in \(0, 1\), got 88"),
        (dict(floor=0.9, target=0.8), ValueError, "target 0.8 is below the floor 0.9"),
    ],
    ids=["fine", "data-typo", "trainer-typo", "unknown", "seconds", "percent-floor", "target-below-floor"],
)
def test_a_bad_recipe_is_refused_where_it_is_written(changes, error, match):
    good = Experiment(data={}, model={}, trainer={}, seconds=1.0)
    with pytest.raises(error, match=match) if error else contextlib.nullcontext():
        Recipe("probe", ("d2l.torch.LeNet",), good, good, full=dataclasses.replace(good, **changes))


def test_recipes_are_read_only_experiment_hands_out_copies_and_names_what_exists():
    with pytest.raises(KeyError, match="No experiment 'resnet19'; did you mean 'resnet'[?] known: .*resnext"):
        experiment("resnet19")
    cfg = experiment("resnet", "ci", verbose=False)
    cfg.trainer["max_steps"] = 1
    assert experiment("resnet", "ci", verbose=False).trainer["max_steps"] != 1
    with pytest.raises(TypeError):
        EXPERIMENTS["resnet"].demo.trainer["time_budget"] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXPERIMENTS["resnet"].demo.floor = 0.1
    with pytest.raises(KeyError, match="use one of ci, demo, full"):
        EXPERIMENTS["resnet"]["fast"]
    assert EXPERIMENTS["resnet"]["demo"] is EXPERIMENTS["resnet"].demo


def test_a_floor_changed_in_the_recipe_is_what_experiment_and_the_floors_table_give(monkeypatch):
    lines = presets.floors_table().splitlines()
    assert len(lines) == 2 + len(EXPERIMENTS) and "| lenet | - | - | - | - |" in lines
    recipe, before = EXPERIMENTS["resnet"], experiment("resnet", "demo", verbose=False)
    changed = dataclasses.replace(recipe, demo=dataclasses.replace(recipe.demo, floor=0.5))
    monkeypatch.setitem(EXPERIMENTS, "resnet", changed)
    after = experiment("resnet", "demo", verbose=False)
    assert after.floor == 0.5 != before.floor
    assert dataclasses.replace(after, floor=before.floor) == before  # nothing else changed
    assert experiment("resnet", "ci", verbose=False).floor == recipe.ci.floor
    (row,) = [ln for ln in presets.floors_table().splitlines() if ln.startswith("| resnet |")]
    assert row.split(" | ")[2] == "50%" and row.endswith(f"| {100 * before.target:g}% |")


# -- notebooks assert the recipe's floor, never a number of their own ------------------------------


RANGE = ("0", "1", "0.0", "1.0")  # an accuracy's bounds, fine to assert


def _literal(node: ast.AST, floors: set[str]) -> bool:
    """A number typed in the notebook: 0.88, {"ci": 0.7, "demo": 0.88}[preset], or a name bound to one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, float | int) and not isinstance(node.value, bool)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
        return all(_literal(v, floors) for v in node.value.values)
    return isinstance(node, ast.Name) and node.id in floors


def _accuracy(node: ast.AST) -> bool:
    """An accuracy itself (``val_acc``, ``acc["exact"]``, ``table["val acc"].min()``), not a difference."""
    plain = not any(isinstance(n, ast.BinOp | ast.Compare) for n in ast.walk(node))
    return plain and "acc" in ast.unparse(node).lower()


def literal_floors(notebook: Path) -> list[str]:
    """Every assert of ``notebook`` that compares an accuracy with a number instead of ``cfg.floor``."""
    cells = json.loads(notebook.read_text())["cells"]
    code = {i: "".join(c["source"]) for i, c in enumerate(cells) if c["cell_type"] == "code"}
    transform = TransformerManager().transform_cell  # IPython's magics into Python
    nodes = [(i, node) for i, src in code.items() for node in ast.walk(ast.parse(transform(src)))]
    # names bound to a typed number, e.g. min_acc = {"ci": 0.75, ...}[cfg.preset]
    assigned = [n for _, n in nodes if isinstance(n, ast.Assign) and _literal(n.value, set())]
    floors = {t.id for n in assigned for t in n.targets if isinstance(t, ast.Name)}
    found = []
    for i, node in nodes:
        compares = ast.walk(node.test) if isinstance(node, ast.Assert) else ()
        for cmp in (n for n in compares if isinstance(n, ast.Compare)):
            operands = [cmp.left, *cmp.comparators]
            bounds = [o for o in operands if _literal(o, floors) and ast.unparse(o) not in RANGE]
            if bounds and any(_accuracy(o) for o in operands if o not in bounds):
                found.append(f"{notebook.name}, cell {i}, line {cmp.lineno}: assert {ast.unparse(cmp)}")
    return found


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda nb: nb.stem)
def test_notebooks_assert_the_recipes_floor(notebook):
    found = literal_floors(notebook)
    message = "These asserts compare an accuracy with a typed number, not the recipe's floor (cfg.floor):"
    assert not found, "\n  ".join([message, *found])


def test_the_floor_scan_catches_typed_numbers(tmp_path):
    cells = [
        'cfg = experiment("resnet")\nacc = trainer.history[-1]["val_acc"]',
        "assert acc >= cfg.floor and 0.0 <= acc <= 1.0",  # fine: the recipe's floor, and the range
        'assert early["exact"] > early["running"] + 0.1',  # fine: one accuracy against another
        "assert abs(acc - 0.9) < 0.02",  # fine: a tolerance on a difference
        "assert acc > 0.88",
        'assert last["val_acc"] > {"ci": 0.7, "demo": 0.88}[cfg.preset]',
        'min_acc = {"ci": 0.75, "demo": 0.7}[cfg.preset]\nassert table["val acc"].min() > min_acc',
        "%matplotlib inline\nassert (table['val acc'] > 0.6).all()",
    ]
    nb = {"cells": [{"cell_type": "code", "source": src} for src in cells], "metadata": {}, "nbformat": 4}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    found = literal_floors(path)
    assert [f.split(",")[1] for f in found] == [" cell 4", " cell 5", " cell 6", " cell 7"], found

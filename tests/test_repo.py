"""The repository itself: notebooks in lecture order and committed clean, dependencies declared once."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LECTURE_ORDER = ["00_fashion_mnist", "01_batch_norm", "02_resnet", "03_resnext", "04_densenet"]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's


def names(requirements) -> set[str]:
    """Normalized distribution names of requirement strings (PEP 503), options and paths dropped."""
    out = set()
    for req in requirements:
        req = req.split("#")[0].strip()
        if not req or req.startswith(("-", ".", "/")):
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0)
        name = re.sub(r"[-_.]+", "-", name).lower()
        out.add(CONDA_NAMES.get(name, name))
    return out


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_notebooks_are_the_lecture_in_order():
    assert [nb.stem for nb in NOTEBOOKS][: len(LECTURE_ORDER)] == LECTURE_ORDER


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{nb.name}: cells {dirty} have outputs; run `make format` (nbstripout) first"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_title_and_prints_its_preset(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith(f"# {nb.stem[:2]} ")
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "current_preset()" in code or "experiment(" in code
    assert json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_conda_environment_names_the_same_dependencies():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python=", "pip"))]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = names(pyproject()["dependencies"]) | names(pyproject()["optional-dependencies"]["lab"])
    assert names(conda) == declared
    assert "-e ." in pip and "conda-forge" in env["channels"]
    assert any(d.startswith("pytorch") and "cpu" in d for d in conda)  # the CPU build


def test_binder_names_the_same_dependencies():
    binder = ROOT / "binder"
    reqs = (binder / "requirements.txt").read_text().splitlines()
    declared = names(pyproject()["dependencies"]) | names(pyproject()["optional-dependencies"]["lab"])
    assert names(reqs) == declared
    assert "dataset-fashion-mnist" in (binder / "apt.txt").read_text().split()


def test_d2l_is_installed_without_its_pins_everywhere():
    assert "d2l" not in names(pyproject()["dependencies"])
    assert "--no-deps d2l==1.0.3" in (ROOT / "README.md").read_text()
    assert 'D2L_SPEC="d2l==1.0.3"' in (ROOT / "tools" / "setup.sh").read_text()
    assert "--no-deps" in (ROOT / "binder" / "postBuild").read_text()

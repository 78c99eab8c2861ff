"""Shared fixtures (the real Fashion-MNIST files, a private cache so tests never touch ~/.cache) and
the test tiers."""

import gzip
import shutil
from pathlib import Path

import pytest

from d2l_ext import data as fm

# Tiers, registered as markers in pyproject.toml. A test's file decides its tier, so a new test
# joins its file's tier without a decorator: `make unit` runs `pytest tests -m unit`.
TIERS = {
    "test_lab_e2e.py": "browser",
    "test_exercises_lab.py": "browser",
    "test_binder.py": "binder",
    "test_site.py": "site",
    "test_sections_run.py": "notebook",  # a section of 01 alone, in a fresh kernel
}


def pytest_collection_modifyitems(config, items):
    # This conftest is loaded when tests/ is collected, so notebooks get their marker when they run
    # together with tests/ (as in `make test`); `make notebooks` selects them by their folder.
    for item in items:
        tier = "notebook" if item.path.suffix == ".ipynb" else TIERS.get(item.path.name, "unit")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def real_raw_dir() -> Path:
    """The verified, decompressed idx files of the real data set (found the way users find them)."""
    raw_dir, _ = fm.find_fashion_mnist()
    return raw_dir


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $FASHION_MNIST_DIR, an empty private cache, and no Debian folder: nothing to find."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("D2L_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    fm._load.cache_clear()
    yield tmp_path
    fm._load.cache_clear()


@pytest.fixture(scope="session")
def _gz_master(real_raw_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gz")
    for name in fm.FILES:
        with open(real_raw_dir / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb", 1) as dst:
            shutil.copyfileobj(src, dst)
    return folder


@pytest.fixture
def gz_copy(_gz_master, tmp_path) -> Path:
    """A folder with the four files gzipped anew (as Debian ships them: other bytes, same content)."""
    return Path(shutil.copytree(_gz_master, tmp_path / "gz"))

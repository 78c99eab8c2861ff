"""Shared fixtures: the real Fashion-MNIST files, and a private cache so tests never touch ~/.cache."""

import gzip
import shutil
from pathlib import Path

import pytest

from d2l_ext import data as fm


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

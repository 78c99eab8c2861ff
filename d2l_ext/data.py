"""Fashion-MNIST for small machines: found offline first, verified, kept in memory, batched fast.

`FashionMNIST` keeps the interface of the book's `d2l.FashionMNIST` (``batch_size``, ``resize``,
``train``/``val``, ``get_dataloader(train)``, ``text_labels``, ``visualize``), but

* finds the four idx files without a download where it can (see `find_fashion_mnist`),
* checks the SHA-256 of the *decompressed* files, so a gzip-recompressed copy (Debian's) is
  accepted and a truncated or altered one is not,
* keeps the images as one uint8 tensor and batches them without PIL or worker processes
  (the book's four workers oversubscribe a two-core laptop), resizing whole batches at once,
* can take a deterministic, class-balanced subset for the fast run presets,
* never writes next to the notebook (the book writes ``../data``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torchvision
from d2l import torch as d2l
from torch.nn import functional as F

__all__ = [
    "DEBIAN_DIR",
    "FILES",
    "MEAN",
    "STD",
    "DataError",
    "FashionMNIST",
    "TensorLoader",
    "balanced_subset",
    "cache_dir",
    "find_fashion_mnist",
]

#: SHA-256 of the decompressed upstream idx files (zalandoresearch/fashion-mnist).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: Where Debian's and Ubuntu's package ``dataset-fashion-mnist`` installs the gzipped files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Per-pixel mean and standard deviation of the 60,000 training images (notebook 00 computes them).
MEAN, STD = 0.2860, 0.3530


class DataError(RuntimeError):
    """The data set is missing, corrupt, or cannot be shaped as asked."""


def cache_dir() -> Path:
    """The per-user cache: ``$D2L_EXT_CACHE``, else ``$XDG_CACHE_HOME/d2l_ext``, else ``~/.cache/d2l_ext``."""
    if os.environ.get("D2L_EXT_CACHE"):
        return Path(os.environ["D2L_EXT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "d2l_ext"


def _read_verified(folder: Path, name: str) -> bytes | None:
    """The decompressed bytes of ``name`` in ``folder`` (plain or ``.gz``), checked; None if absent."""
    plain, gz = folder / name, folder / f"{name}.gz"
    if plain.is_file():
        path, raw = plain, plain.read_bytes()
    elif gz.is_file():
        path = gz
        try:
            raw = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:  # truncated or not gzip at all
            raise DataError(
                f"{gz} is not a readable gzip file ({e}). Delete it and fetch the data again."
            ) from None
    else:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise DataError(
            f"{path} is corrupt: the SHA-256 of its decompressed content is\n  {digest}\n"
            f"but the upstream {name} has\n  {FILES[name]}\n"
            "Delete the file and get the data set again (reinstall the package "
            "dataset-fashion-mnist, or let d2l_ext download it)."
        )
    return raw


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in FILES)


def _candidates(root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Folders to look in, in order, each with a phrase that says what it is."""
    found = []
    if root is not None:
        found.append((Path(root).expanduser(), "the root argument"))
    if os.environ.get("FASHION_MNIST_DIR"):
        found.append((Path(os.environ["FASHION_MNIST_DIR"]).expanduser(), "$FASHION_MNIST_DIR"))
    found.append((DEBIAN_DIR, "the package dataset-fashion-mnist"))
    found.append((cache_dir() / "FashionMNIST" / "raw", "the d2l_ext cache"))
    return found


def _download(raw_dir: Path) -> None:
    """Let torchvision fetch the upstream files (mirrors, MD5 of the archives) into the cache."""
    try:
        torchvision.datasets.FashionMNIST(root=str(raw_dir.parent.parent), train=True, download=True)
    except Exception as e:  # no network, proxy, mirror down: all end the same way for a student
        raise DataError(
            "Fashion-MNIST was not found on this machine and could not be downloaded "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}).\n"
            "Get it in one of three ways:\n"
            "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            f"(installs into {DEBIAN_DIR});\n"
            "  2. put the four idx files (gzipped or not) in a folder and set "
            "FASHION_MNIST_DIR to it;\n"
            "  3. connect to the internet and run again: d2l_ext downloads them into "
            f"{raw_dir}."
        ) from None


def find_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> tuple[Path, str]:
    """Locate and verify the four idx files; return the folder torchvision can read and its source.

    Looks, in order, in ``root``, ``$FASHION_MNIST_DIR``, Debian's ``/usr/share/datasets/fashion-mnist``
    and the per-user cache, then downloads into the cache. Files are verified by the SHA-256 of
    their decompressed bytes; gzipped ones are decompressed into the cache, in the layout
    ``<cache>/FashionMNIST/raw/`` that `torchvision.datasets.FashionMNIST` reads.
    """
    raw_dir = cache_dir() / "FashionMNIST" / "raw"
    for folder, what in _candidates(root):
        if not _complete(folder):
            if what == "the root argument" or what == "$FASHION_MNIST_DIR":
                missing = [n for n in FILES if not ((folder / n).is_file() or (folder / f"{n}.gz").is_file())]
                raise DataError(
                    f"{what} points to {folder}, which lacks {', '.join(missing)} (plain or .gz). "
                    "Put the four upstream idx files there, or unset it to use the other sources."
                )
            continue
        if folder == raw_dir:
            for name in FILES:
                _read_verified(folder, name)
            return raw_dir, f"{what} ({folder})"
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            raw = _read_verified(folder, name)
            target = raw_dir / name
            if not (
                target.is_file()
                and target.stat().st_size == len(raw)
                and hashlib.sha256(target.read_bytes()).hexdigest() == FILES[name]
            ):
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(raw)
                tmp.replace(target)  # atomic, so a crash never leaves a half-written file behind
        return raw_dir, f"{what} ({folder})"
    if not download:
        raise DataError(
            "Fashion-MNIST was not found and download=False. Install the package "
            "dataset-fashion-mnist, set FASHION_MNIST_DIR, or allow the download."
        )
    _download(raw_dir)
    for gz in raw_dir.glob("*.gz"):  # torchvision keeps the archives beside what it extracted
        gz.unlink()
    for name in FILES:
        _read_verified(raw_dir, name)
    return raw_dir, f"a download into the d2l_ext cache ({raw_dir})"


@functools.lru_cache(maxsize=4)
def _load(raw_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = torchvision.datasets.FashionMNIST(root=str(raw_dir.parent.parent), train=train, download=False)
    return ds.data, ds.targets  # (N, 28, 28) uint8, (N,) int64


def balanced_subset(targets: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` examples, ``n // 10`` of each class, chosen by a fixed seed; sorted."""
    classes = int(targets.max()) + 1
    if n % classes or not 0 < n <= len(targets):
        raise DataError(
            f"A class-balanced subset needs a multiple of {classes} up to {len(targets)}, got {n}."
        )
    g = torch.Generator().manual_seed(seed)
    per = n // classes
    picks = []
    for c in range(classes):
        idx = (targets == c).nonzero().squeeze(1)
        if len(idx) < per:
            raise DataError(f"Class {c} has only {len(idx)} examples; cannot take {per}.")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(picks).sort().values


def _check_resize(resize) -> tuple[int, int]:
    if isinstance(resize, int) and not isinstance(resize, bool):
        resize = (resize, resize)
    if (
        not isinstance(resize, Sequence)
        or len(resize) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in resize)
    ):
        raise DataError(f"resize must be an int or a pair of ints (height, width), got {resize!r}.")
    if min(resize) < 1:
        raise DataError(f"resize={tuple(resize)} asks for an empty image; use sizes of at least 1 pixel.")
    if max(resize) > 1024:
        raise DataError(
            f"resize={tuple(resize)} would blow each 28x28 image up to over a million pixels; "
            "the book uses (96, 96), and 224 is the largest size these networks were designed for."
        )
    return tuple(resize)


class TensorLoader:
    """Minibatches of an in-memory image tensor: shuffled per epoch by a seeded generator.

    Iterating yields ``(X, y)`` with ``X`` float32 of shape (batch, 1, H, W); conversion, resizing
    and normalization happen per batch on whole tensors. ``len()`` is the number of batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        resize: tuple[int, int],
        normalize: bool,
        seed: int = 0,
        flip: bool = False,
    ):
        self.images, self.targets = images, targets
        self.batch_size, self.shuffle, self.resize = batch_size, shuffle, resize
        self.normalize, self.flip = normalize, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def to(self, device: torch.device | str) -> TensorLoader:
        """Keep the whole data set on ``device`` (a GPU), so batches never cross the bus."""
        self.images, self.targets = self.images.to(device), self.targets.to(device)
        return self

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        X = images.unsqueeze(1).float().div_(255)  # (N, 1, 28, 28) in [0, 1], as ToTensor gives
        if X.shape[-2:] != self.resize:
            X = F.interpolate(X, size=self.resize, mode="bilinear", align_corners=False, antialias=True)
        if self.normalize:
            X = (X - MEAN) / STD
        return X

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        order = torch.randperm(n, generator=self.generator).to(self.targets.device) if self.shuffle else None
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size] if order is not None else slice(i, i + self.batch_size)
            X = self.transform(self.images[idx])
            if self.flip:  # random horizontal flip: clothes are left-right symmetric
                mask = torch.rand(len(X), generator=self.generator).to(X.device) < 0.5
                X = torch.where(mask[:, None, None, None], X.flip(-1), X)
            yield X, self.targets[idx]


class _Split(torch.utils.data.Dataset):
    """One split as a map-style dataset: ``ds[i]`` is ``(image (1, H, W), label)`` like the book's."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, loader: TensorLoader):
        self.images, self.targets, self._loader = images, targets, loader

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loader.transform(self.images[i][None])[0], self.targets[i]


class FashionMNIST(d2l.FashionMNIST):
    """The Fashion-MNIST data set (Xiao et al., 2017), offline first and in memory.

    Args:
        batch_size: minibatch size.
        resize: output (height, width), or one int for a square; 28 keeps the native size.
        root: a folder with the four idx files (plain or gzipped), tried before anything else.
        normalize: standardize with the training set's mean and std (0.2860, 0.3530).
        train_subset, val_subset: sizes of deterministic, class-balanced subsets (None: all).
        flip: randomly flip training images left-right (augmentation).
        seed: seeds the subsets and the shuffling.
        download: allow a download into the cache as the last resort.
    """

    def __init__(
        self,
        batch_size: int = 64,
        resize: int | tuple[int, int] = (28, 28),
        root: str | os.PathLike | None = None,
        normalize: bool = False,
        train_subset: int | None = None,
        val_subset: int | None = None,
        flip: bool = False,
        seed: int = 0,
        download: bool = True,
        verbose: bool = True,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive int, got {batch_size!r}.")
        self.save_hyperparameters(ignore=["root", "verbose"])
        self.resize = _check_resize(resize)
        raw_dir, self.source = find_fashion_mnist(root, download=download)
        splits = {}
        for train, subset in ((True, train_subset), (False, val_subset)):
            images, targets = _load(raw_dir, train)
            if subset is not None:
                idx = balanced_subset(targets, subset, seed)
                images, targets = images[idx], targets[idx]
            loader = TensorLoader(
                images,
                targets,
                batch_size,
                shuffle=train,
                resize=self.resize,
                normalize=normalize,
                seed=seed,
                flip=flip and train,
            )
            splits[train] = _Split(images, targets, loader)
        self.train, self.val = splits[True], splits[False]
        if verbose:
            print(
                f"Fashion-MNIST: {len(self.train):,} training and {len(self.val):,} test images "
                f"at {self.resize[0]}x{self.resize[1]}, from {self.source}, checksums verified."
            )

    def get_dataloader(self, train: bool) -> TensorLoader:
        return (self.train if train else self.val)._loader

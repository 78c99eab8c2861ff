"""Fashion-MNIST for small machines: found offline first, verified, kept in memory, batched fast.

`FashionMNIST` keeps the interface of the book's `d2l.FashionMNIST`, checks the SHA-256 of the
*decompressed* files (Debian's are recompressed) and parses exactly the bytes it checked, batches
without PIL or worker processes (the book's four workers oversubscribe a two-core laptop), and never
writes next to the notebook: its cache is written atomically, never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import os
import stat
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch
import torchvision
from d2l import torch as d2l
from torch.nn import functional as F

__all__ = [
    "DEBIAN_DIR",
    "DOWNLOAD_TIMEOUT",
    "FILES",
    "MEAN",
    "STD",
    "DataError",
    "FashionMNIST",
    "TensorLoader",
    "balanced_subset",
    "cache_dir",
    "find_fashion_mnist",
    "write_atomic",
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
#: Seconds a download waits for the next bytes from a mirror before it gives that mirror up.
DOWNLOAD_TIMEOUT = 30.0
#: Per-pixel mean and standard deviation of the 60,000 training images (notebook 00 computes them).
MEAN, STD = 0.2860, 0.3530

_CACHE = "the d2l_ext cache"
# O_NOFOLLOW does not exist on Windows (where making a link needs privileges); O_BINARY only there.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class DataError(RuntimeError):
    """The data set is missing, corrupt, or cannot be shaped as asked."""


def cache_dir() -> Path:
    """The per-user cache: ``$D2L_EXT_CACHE``, else ``$XDG_CACHE_HOME/d2l_ext``, else ``~/.cache/d2l_ext``."""
    if os.environ.get("D2L_EXT_CACHE"):
        return Path(os.environ["D2L_EXT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "d2l_ext"


def _why(e: OSError) -> str:
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)


def _cache_error(raw_dir: Path, e: OSError) -> DataError:
    setting = os.environ.get("D2L_EXT_CACHE")
    now = f"it is now {setting!r}" if setting else "it is not set now"
    return DataError(
        f"The d2l_ext cache {raw_dir} cannot be used ({_why(e)}).\n"
        f"Set D2L_EXT_CACHE to a writable folder ({now}), or decompress the four idx files into a "
        "folder of your own and set FASHION_MNIST_DIR to it: plain files are read in place."
    )


def _is_file(path: Path, in_cache: bool) -> bool:
    """Whether ``path`` is a regular file; in the cache a symbolic link never counts as one."""
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=not in_cache).st_mode)
    except OSError as e:
        # not there; an unusable cache is reported where d2l_ext first needs to write it
        if in_cache or isinstance(e, FileNotFoundError | NotADirectoryError):
            return False
        raise DataError(f"Cannot look at {path} ({_why(e)}). Check the permissions of its folder.") from None


def _verified(path: Path, name: str, in_cache: bool) -> bytes:
    """The decompressed bytes of ``path`` (plain or ``.gz``), checked against the upstream ``name``."""
    try:
        with open(os.open(path, os.O_RDONLY | _BINARY | (_NOFOLLOW if in_cache else 0)), "rb") as f:
            raw = f.read()
    except OSError as e:
        if in_cache:
            raise _cache_error(path.parent, e) from None
        raise DataError(f"Cannot read {path} ({_why(e)}). Check its permissions.") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # truncated, a damaged block, or not gzip at all
            raise DataError(
                f"{path} is not a readable gzip file ({e}). Delete it and fetch the data again."
            ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest == FILES[name]:
        return raw
    really = next((other for other, known in FILES.items() if known == digest), None)
    if really is not None:  # the checksums identify each of the four files
        raise DataError(
            f"{path} holds the upstream {really}, not {name}: its content is intact, only its name "
            f"is wrong. Rename it to {really}{path.suffix if path.suffix == '.gz' else ''} (if a file "
            "of that name is there too, the two were swapped: exchange their names)."
        )
    raise DataError(
        f"{path} is corrupt: the SHA-256 of its decompressed content is\n  {digest}\n"
        f"but the upstream {name} has\n  {FILES[name]}\n"
        "Delete the file and get the data set again (reinstall the package "
        "dataset-fashion-mnist, or let d2l_ext download it)."
    )


def _cached_ok(target: Path, name: str) -> bool:
    """Whether the cache already holds a verified ``name`` (written by us, or another process)."""
    try:
        return _is_file(target, in_cache=True) and bool(_verified(target, name, in_cache=True))
    except DataError:  # corrupt, or replaced by a link or removed meanwhile: write it anew
        return False


def _prepare_cache() -> Path:
    """Create ``<cache>/FashionMNIST/raw``, refusing symbolic links below the cache folder itself."""
    root = cache_dir()
    raw_dir = root / "FashionMNIST" / "raw"
    try:
        root.mkdir(parents=True, exist_ok=True)  # may be a link the user made, e.g. onto another disk
        for folder in (root / "FashionMNIST", raw_dir):
            folder.mkdir(exist_ok=True)  # a link to a folder passes here, and is refused next
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise NotADirectoryError(0, "not a folder (links are not followed in the cache)", str(folder))
    except OSError as e:
        raise _cache_error(raw_dir, e) from None
    return raw_dir


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` atomically: a crash or an error leaves the old file or
    none, never a short one. Raises OSError."""
    # O_CREAT | O_EXCL | O_NOFOLLOW under a random name: a planted file or link makes it fail
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # a crash must not leave a short file under the final name
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o644)  # mkstemp's 0o600 would hide a shared cache
        os.replace(tmp, path)  # atomic; replaces a link at path itself, not what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _store(raw_dir: Path, name: str, raw: bytes) -> None:
    if _cached_ok(raw_dir / name, name):  # there already, e.g. written by another process
        return
    try:
        write_atomic(raw_dir / name, lambda f: f.write(raw))
    except OSError as e:
        raise _cache_error(raw_dir, e) from None


def _cause(e: Exception) -> str:
    reason = e.reason if type(e) is urllib.error.URLError else e  # an HTTPError says its code itself
    if isinstance(reason, TimeoutError):
        return f"timed out: no data for {DOWNLOAD_TIMEOUT:g} s"
    return f"{type(reason).__name__}: {reason}"


def _download(raw_dir: Path) -> None:
    """Fetch the files the cache lacks from torchvision's mirrors; verify and store each."""
    headers = {"User-Agent": torchvision.datasets.utils.USER_AGENT}
    for name in [n for n in FILES if not _cached_ok(raw_dir / n, n)]:
        causes = []
        for mirror in torchvision.datasets.FashionMNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:  # the timeout bounds the connection and every read: a silent server is given up
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT
                ) as r:
                    raw = gzip.decompress(r.read())
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as e:
                if isinstance(e, urllib.error.HTTPError):
                    e.close()  # it holds the connection open
                causes.append(f"{url}: {_cause(e)}")
                continue
            digest = hashlib.sha256(raw).hexdigest()
            if digest == FILES[name]:
                _store(raw_dir, name, raw)
                break
            causes.append(f"{url}: the decompressed {name} is corrupt (SHA-256 {digest})")
        else:
            raise DataError(
                "Fashion-MNIST was not found on this machine and could not be downloaded:\n  "
                + "\n  ".join(causes or ["torchvision.datasets.FashionMNIST.mirrors is empty"])
                + "\nGet it in one of three ways:\n"
                "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                f"(installs into {DEBIAN_DIR});\n"
                "  2. put the four idx files (gzipped or not) in a folder and set FASHION_MNIST_DIR to it;\n"
                f"  3. connect to the internet and run again: d2l_ext downloads them into {raw_dir}."
            )


def _find(root: str | os.PathLike | None) -> tuple[Path, str, bool]:
    """The folder of the four verified, decompressed files, its source in words, and whether it is
    the cache; tried in order: ``root``, ``$FASHION_MNIST_DIR``, Debian's folder, the cache, a download."""
    env = os.environ.get("FASHION_MNIST_DIR")
    for where, folder in (
        ("the root argument", root),
        ("$FASHION_MNIST_DIR", env or None),
        ("the package dataset-fashion-mnist", DEBIAN_DIR),
        (_CACHE, cache_dir() / "FashionMNIST" / "raw"),
    ):
        if folder is None:
            continue
        folder, in_cache = Path(folder).expanduser(), where == _CACHE
        files = {}
        for name in FILES:
            for path in [folder / name] + ([] if in_cache else [folder / f"{name}.gz"]):  # plain first
                if _is_file(path, in_cache):
                    files[name] = path
                    break
        if len(files) < len(FILES):
            if where in ("the root argument", "$FASHION_MNIST_DIR"):  # named by the user: say what is wrong
                missing = ", ".join(n for n in FILES if n not in files)
                raise DataError(
                    f"{where} points to {folder}, which lacks {missing} (plain or .gz). "
                    "Put the four upstream idx files there, or unset it to use the other sources."
                )
            continue
        verified = {name: _verified(path, name, in_cache) for name, path in files.items()}
        if all(path.name == name for name, path in files.items()):  # all plain: read in place
            return folder, f"{where} ({folder})", in_cache
        raw_dir = _prepare_cache()
        for name, raw in verified.items():
            _store(raw_dir, name, raw)
        return raw_dir, f"{where} ({folder})", True
    raw_dir = _prepare_cache()  # before any traffic: an unusable cache would waste the download
    _download(raw_dir)
    return raw_dir, f"a download into {_CACHE} ({raw_dir})", True


def find_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder that holds the four verified, decompressed idx files, and its source in words.

    Tries ``root``, ``$FASHION_MNIST_DIR``, Debian's folder and the per-user cache, then downloads
    into the cache. Four plain files are used in place; gzipped ones are decompressed into the cache.
    """
    folder, source, _ = _find(root)
    return folder, source


def _parse_idx(raw: bytes) -> torch.Tensor:
    """The uint8 array in a verified idx file: 4 header bytes (the last the number of dimensions),
    each dimension as a big-endian uint32, then the values."""
    dims = struct.unpack_from(f">{raw[3]}I", raw, 4)
    return torch.frombuffer(bytearray(memoryview(raw)[4 + 4 * raw[3] :]), dtype=torch.uint8).view(dims)


@functools.lru_cache(maxsize=4)
def _load(raw_dir: Path, train: bool, in_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, parsed from the bytes just verified: (N, 28, 28) uint8 images, (N,) int64 labels."""
    split = "train" if train else "t10k"
    images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    X = _parse_idx(_verified(raw_dir / images, images, in_cache))
    y = _parse_idx(_verified(raw_dir / labels, labels, in_cache))
    return X, y.long()  # int64 labels, as torchvision's read_label_file gives


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # batch_size=True: batches of one


def _check_int(name: str, value, example: int, positive: bool = False) -> None:
    if not _is_int(value) or (positive and value < 1):  # torch's generators take ints only
        raise DataError(
            f"{name} must be {'a positive' if positive else 'an'} int, e.g. {example}; got {name}={value!r}."
        )


def _check_resize(resize) -> tuple[int, int]:
    pair = (resize, resize) if isinstance(resize, int) else resize
    if not isinstance(pair, Sequence) or len(pair) != 2 or not all(_is_int(s) for s in pair):
        raise DataError(f"resize must be an int or a pair of ints (height, width), got {resize!r}.")
    if min(pair) < 1:
        raise DataError(f"resize={tuple(pair)} asks for an empty image; use sizes of at least 1 pixel.")
    if max(pair) > 1024:
        raise DataError(
            f"resize={tuple(pair)} would blow each 28x28 image up to over a million pixels; "
            "the book uses (96, 96), and 224 is the largest size these networks were designed for."
        )
    return tuple(pair)


class TensorLoader:
    """Minibatches ``(X, y)`` of an in-memory uint8 image tensor, ``X`` float32 (batch, 1, H, W),
    converted, resized and normalized per batch; shuffled per epoch by a generator of its own."""

    def __init__(self, images, targets, batch_size, shuffle, resize, normalize, seed=0):
        self.images, self.targets = images, targets
        self.batch_size, self.shuffle, self.resize = batch_size, shuffle, resize
        self.normalize = normalize
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def reseed(self, seed: int) -> None:
        """Restart shuffling from ``seed``: the next epoch then depends on the seed alone."""
        _check_int("seed", seed, 0)
        self.generator.manual_seed(seed)

    def to(self, device: torch.device | str) -> TensorLoader:
        """Keep the whole data set on ``device`` (a GPU), so batches never cross the bus."""
        self.images, self.targets = self.images.to(device), self.targets.to(device)
        return self

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        X = images.unsqueeze(1).float().div_(255)  # (N, 1, 28, 28) in [0, 1], as ToTensor gives
        if X.shape[-2:] != self.resize:
            X = F.interpolate(X, size=self.resize, mode="bilinear", align_corners=False, antialias=True)
        return (X - MEAN) / STD if self.normalize else X

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        order = torch.randperm(n, generator=self.generator).to(self.targets.device) if self.shuffle else None
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size] if order is not None else slice(i, i + self.batch_size)
            yield self.transform(self.images[idx]), self.targets[idx]


class _Split(torch.utils.data.Dataset):
    """One split as a map-style dataset: ``ds[i]`` is ``(image (1, H, W), label)`` like the book's."""

    def __init__(self, loader: TensorLoader):
        self.images, self.targets, self._loader = loader.images, loader.targets, loader

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loader.transform(self.images[i][None])[0], self.targets[i]


class FashionMNIST(d2l.FashionMNIST):
    """The Fashion-MNIST data set (Xiao et al., 2017), offline first and in memory.

    ``resize`` is (height, width) or one int for a square; ``root`` a folder with the four idx files
    (plain or gzipped), tried first; ``normalize`` standardizes with `MEAN` and `STD`;
    ``train_subset``/``val_subset`` take class-balanced subsets; ``seed`` seeds them and the shuffling.
    """

    def __init__(
        self,
        batch_size: int = 64,
        resize: int | tuple[int, int] = (28, 28),
        root: str | os.PathLike | None = None,
        normalize: bool = False,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        verbose: bool = True,
    ):
        _check_int("batch_size", batch_size, 64, positive=True)
        _check_int("seed", seed, 0)
        self.save_hyperparameters(ignore=["root", "verbose"])
        self.resize = _check_resize(resize)
        folder, self.source, in_cache = _find(root)
        for train, subset in ((True, train_subset), (False, val_subset)):
            images, targets = _load(folder, train, in_cache)
            if subset is not None:
                idx = balanced_subset(targets, subset, seed)
                images, targets = images[idx], targets[idx]
            split = _Split(TensorLoader(images, targets, batch_size, train, self.resize, normalize, seed))
            setattr(self, "train" if train else "val", split)
        if verbose:
            print(
                f"Fashion-MNIST: {len(self.train):,} training and {len(self.val):,} test images "
                f"at {self.resize[0]}x{self.resize[1]}, from {self.source}, checksums verified."
            )

    def get_dataloader(self, train: bool) -> TensorLoader:
        return (self.train if train else self.val)._loader

"""Fashion-MNIST for small machines: found offline first, verified, kept in memory, batched fast.

`FashionMNIST` keeps the interface of the book's `d2l.FashionMNIST` (``batch_size``, ``resize``,
``train``/``val``, ``get_dataloader(train)``, ``text_labels``, ``visualize``), but

* finds the four idx files without a download where it can (see `find_fashion_mnist`),
* checks the SHA-256 of the *decompressed* files, so a gzip-recompressed copy (Debian's) is
  accepted and a truncated or altered one is not, and parses exactly the bytes it checked (never
  torchvision's ``processed/*.pt``, which `torchvision.datasets.FashionMNIST` prefers when present),
* keeps the images as one uint8 tensor and batches them without PIL or worker processes
  (the book's four workers oversubscribe a two-core laptop), resizing whole batches at once,
* can take a deterministic, class-balanced subset for the fast run presets,
* never writes next to the notebook (the book writes ``../data``); its cache is written
  atomically, never through a symbolic link, and several processes may fill it at once.
"""

from __future__ import annotations

import enum
import functools
import gzip
import hashlib
import http.client
import math
import os
import stat
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

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

# O_NOFOLLOW does not exist on Windows (where making a link needs privileges); O_BINARY only there.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class DataError(RuntimeError):
    """The data set is missing, corrupt, or cannot be shaped as asked."""


def cache_dir() -> Path:
    """The per-user cache: ``$D2L_EXT_CACHE``, else ``$XDG_CACHE_HOME/d2l_ext``, else ``~/.cache/d2l_ext``."""
    if os.environ.get("D2L_EXT_CACHE"):
        return Path(os.environ["D2L_EXT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "d2l_ext"


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
        mode = os.stat(path, follow_symlinks=not in_cache).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        if in_cache:  # an unusable cache is reported where d2l_ext first needs to write it
            return False
        raise DataError(f"Cannot look at {path} ({_why(e)}). Check the permissions of its folder.") from None
    return stat.S_ISREG(mode)


def _read(path: Path, in_cache: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | _BINARY | (_NOFOLLOW if in_cache else 0))
        with open(fd, "rb") as f:
            return f.read()
    except OSError as e:
        if in_cache:
            raise _cache_error(path.parent, e) from None
        raise DataError(f"Cannot read {path} ({_why(e)}). Check its permissions.") from None


def _verified(path: Path, name: str, in_cache: bool) -> bytes:
    """The decompressed bytes of ``path`` (plain or ``.gz``), checked against the upstream ``name``."""
    raw = _read(path, in_cache)
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
    if not _is_file(target, in_cache=True):
        return False
    try:
        with open(os.open(target, os.O_RDONLY | _BINARY | _NOFOLLOW), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == FILES[name]
    except OSError:  # replaced by a link or removed meanwhile: write it anew
        return False


def _prepare_cache() -> Path:
    """Create ``<cache>/FashionMNIST/raw``, refusing symbolic links below the cache folder itself."""
    root = cache_dir()
    raw_dir = root / "FashionMNIST" / "raw"
    try:
        root.mkdir(parents=True, exist_ok=True)  # may be a link the user made, e.g. onto another disk
        for folder in (root / "FashionMNIST", raw_dir):
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise NotADirectoryError(0, "not a folder (links are not followed in the cache)", str(folder))
    except OSError as e:
        raise _cache_error(raw_dir, e) from None
    return raw_dir


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` atomically, via a file no one else can have opened.

    A crash or an error leaves the old file or none, never a short one; the caches of the data set
    and of trained runs (d2l_ext.runs) are written this way. Raises OSError.
    """
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
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _store(raw_dir: Path, name: str, raw: bytes) -> None:
    """Write verified bytes to ``raw_dir/name`` atomically (`write_atomic`)."""
    target = raw_dir / name
    if _cached_ok(target, name):  # another process got there first
        return
    try:
        write_atomic(target, lambda f: f.write(raw))
    except OSError as e:
        raise _cache_error(raw_dir, e) from None


def _fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": torchvision.datasets.utils.USER_AGENT})
    try:
        # the timeout bounds the connection and every read: a silent server is given up after it
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        e.close()  # it holds the connection open
        raise


def _cause(e: Exception, timeout: float) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP error {e.code} ({e.reason})"
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError):
        return f"timed out: no data for {timeout:g} s"
    return f"{type(reason).__name__}: {reason}"


def _download(raw_dir: Path, names: list[str]) -> None:
    """Fetch the gzipped files from torchvision's Fashion-MNIST mirrors, verify, store in the cache."""
    timeout = DOWNLOAD_TIMEOUT
    for name in names:
        causes = []
        for mirror in torchvision.datasets.FashionMNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:
                raw = gzip.decompress(_fetch(url, timeout))
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as e:
                causes.append(f"{url}: {_cause(e, timeout)}")
                continue
            digest = hashlib.sha256(raw).hexdigest()
            if digest != FILES[name]:  # a mirror serving other data: try the next one
                causes.append(f"{url}: the decompressed {name} is corrupt (SHA-256 {digest})")
                continue
            _store(raw_dir, name, raw)
            break
        else:
            raise DataError(
                "Fashion-MNIST was not found on this machine and could not be downloaded:\n  "
                + "\n  ".join(causes or ["torchvision.datasets.FashionMNIST.mirrors is empty"])
                + "\nGet it in one of three ways:\n"
                "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                f"(installs into {DEBIAN_DIR});\n"
                "  2. put the four idx files (gzipped or not) in a folder and set "
                "FASHION_MNIST_DIR to it;\n"
                "  3. connect to the internet and run again: d2l_ext downloads them into "
                f"{raw_dir}."
            )


class _Kind(enum.Enum):
    """Where a candidate folder comes from; the value is the phrase `find_fashion_mnist` reports."""

    ROOT = "the root argument"
    ENV = "$FASHION_MNIST_DIR"
    DEBIAN = "the package dataset-fashion-mnist"
    CACHE = "the d2l_ext cache"


class _Found(NamedTuple):
    folder: Path  # holds the four decompressed idx files
    source: str  # which source they came from, in words
    in_cache: bool  # then read without following symbolic links


def _candidates(root: str | os.PathLike | None) -> list[tuple[_Kind, Path]]:
    """Folders to look in, in order."""
    found = []
    if root is not None:
        found.append((_Kind.ROOT, Path(root).expanduser()))
    if os.environ.get("FASHION_MNIST_DIR"):
        found.append((_Kind.ENV, Path(os.environ["FASHION_MNIST_DIR"]).expanduser()))
    found.append((_Kind.DEBIAN, DEBIAN_DIR))
    found.append((_Kind.CACHE, cache_dir() / "FashionMNIST" / "raw"))
    return found


def _present(folder: Path, in_cache: bool) -> dict[str, Path]:
    """Each of the four files in ``folder``: plain if there, else gzipped (the cache holds plain ones)."""
    found = {}
    for name in FILES:
        for path in (folder / name,) if in_cache else (folder / name, folder / f"{name}.gz"):
            if _is_file(path, in_cache):
                found[name] = path
                break
    return found


def _find(root: str | os.PathLike | None, download: bool) -> _Found:
    for kind, folder in _candidates(root):
        in_cache = kind is _Kind.CACHE
        files = _present(folder, in_cache)
        if len(files) < len(FILES):
            if kind in (_Kind.ROOT, _Kind.ENV):  # named by the user: say what is wrong with it
                missing = [n for n in FILES if n not in files]
                raise DataError(
                    f"{kind.value} points to {folder}, which lacks {', '.join(missing)} (plain or .gz). "
                    "Put the four upstream idx files there, or unset it to use the other sources."
                )
            continue
        source = f"{kind.value} ({folder})"
        if all(path.name == name for name, path in files.items()):  # all plain: read in place
            for name, path in files.items():
                _verified(path, name, in_cache)
            return _Found(folder, source, in_cache)
        raw_dir = _prepare_cache()
        for name, path in files.items():
            _store(raw_dir, name, _verified(path, name, in_cache))
        return _Found(raw_dir, source, True)
    if not download:
        raise DataError(
            "Fashion-MNIST was not found and download=False. Install the package "
            "dataset-fashion-mnist, set FASHION_MNIST_DIR, or allow the download."
        )
    raw_dir = _prepare_cache()  # before any traffic: an unusable cache would waste the download
    _download(raw_dir, [name for name in FILES if not _cached_ok(raw_dir / name, name)])
    return _Found(raw_dir, f"a download into the d2l_ext cache ({raw_dir})", True)


def find_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> tuple[Path, str]:
    """Locate and verify the four idx files; return the folder that holds them decompressed, and its source.

    Looks, in order, in ``root``, ``$FASHION_MNIST_DIR``, Debian's ``/usr/share/datasets/fashion-mnist``
    and the per-user cache, then downloads into the cache (``DOWNLOAD_TIMEOUT`` seconds without data
    give a mirror up). Files are verified by the SHA-256 of their decompressed bytes. A folder of
    four plain files is used in place; gzipped ones are decompressed into ``<cache>/FashionMNIST/raw/``
    (written atomically, never through a symbolic link).
    """
    found = _find(root, download)
    return found.folder, found.source


def _parse_idx(raw: bytes, name: str) -> torch.Tensor:
    """The array in an idx file: two zero bytes, the type (0x08: uint8), the number of dimensions,
    each dimension as a big-endian uint32, then the values (the format torchvision's reader parses)."""
    zero, dtype, ndim = struct.unpack_from(">HBB", raw)
    dims = struct.unpack_from(f">{ndim}I", raw, 4)
    start = 4 + 4 * ndim
    if zero or dtype != 0x08 or len(raw) != start + math.prod(dims):
        raise DataError(f"{name} is not an idx file of unsigned bytes; check d2l_ext.data.FILES.")
    return torch.frombuffer(bytearray(memoryview(raw)[start:]), dtype=torch.uint8).view(dims)


@functools.lru_cache(maxsize=4)
def _load(raw_dir: Path, train: bool, in_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, parsed from the bytes just verified: (N, 28, 28) uint8 images, (N,) int64 labels."""
    split = "train" if train else "t10k"
    images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    X = _parse_idx(_verified(raw_dir / images, images, in_cache), images)
    y = _parse_idx(_verified(raw_dir / labels, labels, in_cache), labels)
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
    ):
        self.images, self.targets = images, targets
        self.batch_size, self.shuffle, self.resize = batch_size, shuffle, resize
        self.normalize = normalize
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def reseed(self, seed: int) -> None:
        """Restart shuffling from ``seed``: the next epoch then depends on the seed alone."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DataError(f"reseed takes an int seed, got {seed!r}.")
        self.generator.manual_seed(seed)

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
            yield self.transform(self.images[idx]), self.targets[idx]


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
        seed: int = 0,
        download: bool = True,
        verbose: bool = True,
    ):
        # bool is an int in Python: batch_size=True would be batches of one
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise DataError(f"batch_size must be a positive int, e.g. 64; got batch_size={batch_size!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):  # torch's generators take ints only
            raise DataError(f"seed must be an int, e.g. 0; got seed={seed!r}.")
        self.save_hyperparameters(ignore=["root", "verbose"])
        self.resize = _check_resize(resize)
        found = _find(root, download)
        self.source = found.source
        splits = {}
        for train, subset in ((True, train_subset), (False, val_subset)):
            images, targets = _load(found.folder, train, found.in_cache)
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

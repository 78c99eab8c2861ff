"""Fashion-MNIST for small machines: found offline first, verified, kept in memory, batched fast.

`FashionMNIST` keeps the interface of the book's `d2l.FashionMNIST`, checks the SHA-256 of the
*decompressed* files (Debian's are recompressed) and parses exactly the bytes it checked, batches
without PIL or worker processes (the book's four workers oversubscribe a two-core laptop), and never
writes next to the notebook: its cache is written atomically, never through a symbolic link.
"""

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
from typing import BinaryIO, Self

import torch
import torchvision
from d2l import torch as d2l
from torch.nn import functional as F

__all__ = ["DEBIAN_DIR", "DOWNLOAD_TIMEOUT", "FILES", "MEAN", "STD", "DataError", "FashionMNIST"]
__all__ += ["TensorLoader", "balanced_subset", "cache_dir", "find_fashion_mnist", "write_atomic"]

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

_DEBIAN = "the package dataset-fashion-mnist"


class DataError(RuntimeError):
    """The data set is missing, corrupt, or cannot be shaped as asked."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DataError(message)


def cache_dir() -> Path:
    """The per-user cache: ``$D2L_EXT_CACHE``, else ``$XDG_CACHE_HOME/d2l_ext``, else ``~/.cache/d2l_ext``."""
    if os.environ.get("D2L_EXT_CACHE"):
        return Path(os.environ["D2L_EXT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "d2l_ext"


def _verified(path: Path, name: str, in_cache: bool) -> bytes | None:
    """The decompressed bytes of ``path``, checked against the upstream ``name``; None where there is
    no such file (in the cache, a symbolic link is none: it is never followed)."""
    # O_NOFOLLOW does not exist on Windows (where making a link needs privileges); O_BINARY only there
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | (getattr(os, "O_NOFOLLOW", 0) if in_cache else 0)
    try:
        with open(os.open(path, flags), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None  # a folder of that name
            raw = f.read()
    except OSError as e:
        if in_cache or isinstance(e, FileNotFoundError | NotADirectoryError):
            return None  # an unusable cache is reported where d2l_ext first writes to it
        raise DataError(f"Cannot read {path} ({e}). Check its permissions and its folder's.") from None
    try:
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:  # truncated, a damaged block, or not gzip at all
        raise DataError(f"{path} is not a readable gzip file ({e}). Delete it and get it again.") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest == FILES[name]:
        return raw
    really = {known: other for other, known in FILES.items()}.get(digest)  # each file has its checksum
    _require(
        really is None,
        f"{path} holds the upstream {really}, not {name}: its content is intact, only its name is wrong. "
        f"Rename it to {path.name.replace(name, str(really))} (if a file of that name is there too, the "
        "two were swapped: exchange their names).",
    )
    raise DataError(
        f"{path} is corrupt: the SHA-256 of its decompressed content is\n  {digest}\n"
        f"but the upstream {name} has\n  {FILES[name]}\nDelete the file and get the data set again "
        "(reinstall the package dataset-fashion-mnist, or let d2l_ext download it)."
    )


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)``: it holds the old file or the new one, never a short one."""
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


def _store(files: dict[str, bytes]) -> Path:
    """Write verified files into the cache's ``FashionMNIST/raw``, each unless a verified copy is
    there (e.g. from another process); returns that folder."""
    root = cache_dir()
    raw_dir = root / "FashionMNIST" / "raw"
    try:
        root.mkdir(parents=True, exist_ok=True)  # may be a link the user made, e.g. onto another disk
        for folder in (root / "FashionMNIST", raw_dir):
            folder.mkdir(exist_ok=True)  # a link to a folder passes here, and is refused next
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise NotADirectoryError(0, "not a folder (links are not followed in the cache)", str(folder))
        for name, raw in files.items():
            with contextlib.suppress(DataError):  # a corrupt copy is written anew
                if _verified(raw_dir / name, name, in_cache=True) is not None:
                    continue
            write_atomic(raw_dir / name, lambda f: f.write(raw))  # noqa: B023 (called at once)
    except OSError as e:
        raise DataError(
            f"The d2l_ext cache {raw_dir} cannot be used ({e}).\nSet D2L_EXT_CACHE to a writable folder "
            f"(now {os.environ.get('D2L_EXT_CACHE', 'unset')}), or decompress the four idx files into a "
            "folder of your own and set FASHION_MNIST_DIR to it: plain files are read in place."
        ) from None
    return raw_dir


def _download(names: list[str]) -> Path:
    """Fetch ``names`` from torchvision's mirrors into the cache, each verified; returns the folder."""
    raw_dir = _store({})  # before any traffic: an unusable cache would waste the download
    headers = {"User-Agent": torchvision.datasets.utils.USER_AGENT}
    for name in names:
        causes = []
        for mirror in torchvision.datasets.FashionMNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:  # the timeout bounds the connection and every read: a silent server is given up
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                    raw = gzip.decompress(response.read())
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as e:
                if isinstance(e, urllib.error.HTTPError):
                    e.close()  # it holds the connection open
                reason = e.reason if type(e) is urllib.error.URLError else e  # an HTTPError says its code
                why = f"{type(reason).__name__}: {reason}"
                if isinstance(reason, TimeoutError):
                    why = f"timed out: no data for {DOWNLOAD_TIMEOUT:g} s"
                causes.append(f"{url}: {why}")
                continue
            if (digest := hashlib.sha256(raw).hexdigest()) == FILES[name]:
                _store({name: raw})
                break
            causes.append(f"{url}: the decompressed {name} is corrupt (SHA-256 {digest})")
        else:
            raise DataError(
                "Fashion-MNIST was not found on this machine and could not be downloaded:\n  "
                + "\n  ".join(causes or ["torchvision.datasets.FashionMNIST.mirrors is empty"])
                + "\nGet it in one of three ways:\n  1. Debian/Ubuntu: sudo apt-get install "
                f"dataset-fashion-mnist (installs into {DEBIAN_DIR});\n  2. put the four idx files "
                "(gzipped or not) in a folder and set FASHION_MNIST_DIR to it;\n  3. connect to the "
                f"internet and run again: d2l_ext downloads them into {raw_dir}."
            )
    return raw_dir


def _look(folder: Path, in_cache: bool) -> dict[str, tuple[Path, bytes]]:
    """The verified files in ``folder``, name: (path, bytes); a plain file before a gzipped one."""
    found = {}
    for name in FILES:
        for path in [folder / name] + ([] if in_cache else [folder / f"{name}.gz"]):  # the cache: plain
            if name not in found and (raw := _verified(path, name, in_cache)) is not None:
                found[name] = path, raw
    return found


def _find(root: str | os.PathLike | None) -> tuple[Path, str, bool]:
    """The folder of the four verified, decompressed files, its source in words, and whether it is
    the cache; tried in order: ``root``, ``$FASHION_MNIST_DIR``, Debian's folder, the cache, a download."""
    env = os.environ.get("FASHION_MNIST_DIR") or None
    for where, folder in (("the root argument", root), ("$FASHION_MNIST_DIR", env), (_DEBIAN, DEBIAN_DIR)):
        if folder is None:
            continue
        folder = Path(folder).expanduser()
        found = _look(folder, in_cache=False)
        missing = [name for name in FILES if name not in found]
        _require(  # a folder the user named is never skipped: a typo in a path must not download
            not missing or where == _DEBIAN,
            f"{where} points to {folder}, which lacks {', '.join(missing)} (plain or .gz). "
            "Put the four upstream idx files there, or unset it to use the other sources.",
        )
        if not missing and all(path.name == name for name, (path, _) in found.items()):
            return folder, f"{where} ({folder})", False  # four plain files: read in place
        if not missing:
            return _store({name: raw for name, (_, raw) in found.items()}), f"{where} ({folder})", True
    cache = cache_dir() / "FashionMNIST" / "raw"
    missing = [name for name in FILES if name not in _look(cache, in_cache=True)]
    if missing:
        return _download(missing), f"a download into the d2l_ext cache ({cache})", True
    return cache, f"the d2l_ext cache ({cache})", True


def find_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder of the four verified, decompressed idx files and its source in words (see `_find`):
    four plain files are used in place, gzipped ones are decompressed into the cache."""
    folder, source, _ = _find(root)
    return folder, source


@functools.lru_cache(maxsize=4)
def _load(raw_dir: Path, train: bool, in_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, parsed from the bytes just verified: (N, 28, 28) uint8 images, (N,) int64 labels."""
    split = []
    for kind in ("images-idx3", "labels-idx1"):
        path = raw_dir / f"{'train' if train else 't10k'}-{kind}-ubyte"
        raw = _verified(path, path.name, in_cache)
        _require(raw is not None, f"{path} was removed while d2l_ext read it. Run again.")
        # an idx file: 4 header bytes (the last the number of dimensions), each dimension as a
        # big-endian uint32, then the values
        dims = struct.unpack_from(f">{raw[3]}I", raw, 4)
        values = bytearray(memoryview(raw)[4 + 4 * raw[3] :])  # writable, as torch wants
        split.append(torch.frombuffer(values, dtype=torch.uint8).view(dims))
    return split[0], split[1].long()  # int64 labels, as torchvision's read_label_file gives


def balanced_subset(targets: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` examples, ``n // 10`` of each class, chosen by a fixed seed; sorted."""
    classes, generator = int(targets.max()) + 1, torch.Generator().manual_seed(seed)
    per = n // classes
    ok = n % classes == 0 and 0 < n <= len(targets)
    _require(ok, f"A class-balanced subset needs a multiple of {classes} up to {len(targets)}, got {n}.")
    picks = []
    for c in range(classes):
        idx = (targets == c).nonzero().squeeze(1)
        _require(len(idx) >= per, f"Class {c} has only {len(idx)} examples; cannot take {per}.")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per]])
    return torch.cat(picks).sort().values


def _check_seed(seed) -> None:
    # torch's generators take ints only: 1.5 would fail inside torch with "expected a long"
    _require(type(seed) is int, f"seed must be an int, e.g. 0; got seed={seed!r}.")


def _size(resize) -> tuple[int, int]:
    """``resize`` (one int for a square) as (height, width), checked."""
    pair = (resize, resize) if isinstance(resize, int) else resize
    ints = isinstance(pair, Sequence) and len(pair) == 2 and all(type(s) is int for s in pair)
    _require(ints, f"resize must be an int or a pair of ints (height, width), got {resize!r}.")
    _require(min(pair) >= 1, f"resize={tuple(pair)} asks for an empty image; use sizes of at least 1 pixel.")
    _require(
        max(pair) <= 1024,
        f"resize={tuple(pair)} would blow each 28x28 image up to over a million pixels; "
        "the book uses (96, 96), and 224 is the largest size these networks were designed for.",
    )
    return tuple(pair)


class TensorLoader:
    """Minibatches ``(X, y)`` of in-memory uint8 images: ``X`` float32 (batch, 1, H, W), converted,
    resized and normalized per batch, shuffled per epoch by a generator of its own."""

    def __init__(self, images, targets, batch_size, shuffle, resize, normalize, seed=0):
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.shuffle, self.resize, self.normalize = shuffle, resize, normalize
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def reseed(self, seed: int) -> None:
        """Restart shuffling from ``seed``: the next epoch then depends on the seed alone."""
        _check_seed(seed)
        self.generator.manual_seed(seed)

    def to(self, device: torch.device | str) -> Self:
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
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for idx in order.to(self.targets.device).split(self.batch_size):
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
        ok = type(batch_size) is int and batch_size > 0  # not bool: True would mean batches of one
        _require(ok, f"batch_size must be a positive int, e.g. 64; got batch_size={batch_size!r}.")
        _check_seed(seed)
        self.save_hyperparameters(ignore=["root", "verbose"])
        self.resize = _size(resize)
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

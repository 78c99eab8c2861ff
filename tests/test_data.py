"""d2l_ext.data: finding, verifying and batching the real Fashion-MNIST, and its clear errors."""

import functools
import gzip
import hashlib
import http.server
import multiprocessing
import os
import shutil
import socket
import threading
import time
import zlib

import pytest
import torch
import torchvision
from d2l import torch as d2l
from torchvision.transforms import functional as TF

from d2l_ext import data as fm
from d2l_ext.data import DataError, FashionMNIST

CACHED = "the d2l_ext cache ("  # the source of files found in the cache, not downloaded into it


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_book_interface_and_pixels_equal_torchvisions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written next to the notebook
    data = FashionMNIST(batch_size=100, resize=(32, 32), verbose=False)
    assert isinstance(data, d2l.FashionMNIST) and isinstance(data, d2l.DataModule)
    assert data.batch_size == 100 and data.resize == (32, 32) and list(tmp_path.iterdir()) == []
    loader = data.train_dataloader()
    assert len(loader) == 600 and len(data.val_dataloader()) == 100
    X, y = next(iter(loader))
    assert X.shape == (100, 1, 32, 32) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert data.text_labels([0, 9]) == ["t-shirt", "ankle boot"]
    image, label = data.val[0]
    assert image.shape == (1, 32, 32) and int(label) == int(data.val.targets[0])
    X28, _ = next(iter(FashionMNIST(batch_size=5, verbose=False).val_dataloader()))
    torch.testing.assert_close(X28[0], TF.to_tensor(data.val.images[0].numpy()), rtol=0, atol=0)
    X96, _ = next(iter(FashionMNIST(batch_size=5, resize=96, verbose=False).val_dataloader()))
    torch.testing.assert_close(X96, TF.resize(X28, [96, 96], antialias=True), rtol=0, atol=1e-5)


def test_normalize_uses_training_statistics():
    data = FashionMNIST(batch_size=60000, normalize=True, verbose=False)
    X, _ = next(iter(data.get_dataloader(train=False)))
    pixels = data.train.images.double() / 255
    assert abs(pixels.mean().item() - fm.MEAN) < 5e-5 and abs(pixels.std().item() - fm.STD) < 5e-5
    torch.testing.assert_close(X, (data.val.images[:, None].float() / 255 - fm.MEAN) / fm.STD)


def test_subsets_are_balanced_and_fixed_shuffles_seeded_and_reseedable():
    a, b = (
        FashionMNIST(batch_size=500, train_subset=2000, val_subset=1000, seed=3, verbose=False) for _ in "ab"
    )
    assert (torch.bincount(a.train.targets) == 200).all() and (torch.bincount(a.val.targets) == 100).all()
    assert torch.equal(a.train.images, b.train.images)
    loader = a.train_dataloader()
    first = list(loader)
    assert len(first) == 4 and not torch.equal(first[0][1], next(iter(loader))[1])  # a new order each epoch
    seen = torch.cat([y for _, y in first])  # each image once per epoch
    assert len(seen) == 2000 and (torch.bincount(seen) == 200).all()
    assert torch.equal(next(iter(a.val_dataloader()))[1], a.val.targets[:500])  # val in order
    epochs = [list(b.train_dataloader())]  # the same seed, the same order
    for _ in range(2):
        loader.reseed(3)  # the next epoch is a function of the seed alone
        epochs.append(list(loader))
    for other in epochs:
        assert all(torch.equal(X, Xo) and torch.equal(y, yo) for (X, y), (Xo, yo) in zip(first, other))
    with pytest.raises(DataError, match=r"seed must be an int, e\.g\. 0; got seed=1\.5"):
        loader.reseed(1.5)
    with pytest.raises(DataError, match="Class 1 has only 1 examples; cannot take 2"):
        fm.balanced_subset(torch.tensor([0, 0, 0, 1]), 4)
    last = FashionMNIST(batch_size=999, train_subset=10_000, verbose=False).train_dataloader()
    assert [len(y) for _, y in last][-1] == 10  # the last batch is a short one


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize": 0}, "empty image"),
        ({"resize": (28, -1)}, "empty image"),
        ({"resize": (28,)}, "pair of ints"),
        ({"resize": 2.5}, "pair of ints"),
        ({"resize": "96"}, "pair of ints"),
        ({"resize": 4096}, "million pixels"),
        ({"batch_size": 0}, r"batch_size must be a positive int, e\.g\. 64; got batch_size=0"),
        ({"batch_size": True}, r"batch_size must be a positive int, e\.g\. 64; got batch_size=True"),
        ({"seed": 1.5}, r"seed must be an int, e\.g\. 0; got seed=1\.5"),  # not torch's "expected a long"
        ({"train_subset": 1005}, "multiple of 10"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(DataError, match=match):
        FashionMNIST(verbose=False, **kwargs)


# --- where the files are found -----------------------------------------------------------------


def _closed_port():
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once, as offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def offline(isolated, monkeypatch):
    """Nothing to find, and the only mirror refuses at once."""
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    return isolated


def test_found_in_order_root_env_debian_cache_and_the_upstream_files(
    offline, gz_copy, real_raw_dir, monkeypatch, capsys
):
    # torchvision's FashionMNIST prefers <root>/FashionMNIST/processed/{training,test}.pt when present
    processed = offline / "cache" / "FashionMNIST" / "processed"
    processed.mkdir(parents=True)
    for file, n in (("training.pt", 60000), ("test.pt", 10000)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 3)), processed / file)
    data = FashionMNIST(root=gz_copy, verbose=True)
    assert "root argument" in data.source and "checksums verified" in capsys.readouterr().out
    monkeypatch.setenv("FASHION_MNIST_DIR", str(gz_copy))
    again = FashionMNIST(verbose=False)
    assert "$FASHION_MNIST_DIR" in again.source
    assert again.train.images.data_ptr() == data.train.images.data_ptr()  # parsed once, in memory
    monkeypatch.delenv("FASHION_MNIST_DIR")
    monkeypatch.setattr(fm, "DEBIAN_DIR", gz_copy)
    assert "dataset-fashion-mnist" in FashionMNIST(verbose=False).source
    monkeypatch.setattr(fm, "DEBIAN_DIR", offline / "gone")
    fm._load.cache_clear()
    cached = FashionMNIST(verbose=False)  # decompressed into the cache, found there without the folder
    assert cached.source.startswith(CACHED)
    for name, digest in fm.FILES.items():  # the reference folder, found the way users find it
        assert _sha256(real_raw_dir / name) == digest
    for train, split in ((True, cached.train), (False, cached.val)):  # torchvision's own idx readers
        prefix = "train" if train else "t10k"
        images = torchvision.datasets.mnist.read_image_file(str(real_raw_dir / f"{prefix}-images-idx3-ubyte"))
        labels = torchvision.datasets.mnist.read_label_file(str(real_raw_dir / f"{prefix}-labels-idx1-ubyte"))
        assert torch.equal(split.images, images) and torch.equal(split.targets, labels)
    assert cached.train.images.dtype == torch.uint8 and cached.train.targets.dtype == torch.int64


def test_plain_files_are_read_in_place_without_a_cache(blocker, real_raw_dir, monkeypatch):
    folder = blocker.parent / "plain"
    shutil.copytree(real_raw_dir, folder)
    monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert fm.find_fashion_mnist() == (folder, f"$FASHION_MNIST_DIR ({folder})")
    data = FashionMNIST(verbose=False)
    assert len(data.train) == 60000 and "$FASHION_MNIST_DIR" in data.source


def test_incomplete_root_lists_the_missing_files(isolated, gz_copy):
    (gz_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte"):
        FashionMNIST(root=gz_copy, verbose=False)


# --- corrupt and misnamed files ----------------------------------------------------------------


def _damage(path, how):
    data = path.read_bytes()
    if how == "one-label-changed":  # and compressed anew: a valid gzip file
        raw = bytearray(gzip.decompress(data))
        raw[100] ^= 1
        data = gzip.compress(bytes(raw))
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:  # a damaged block: not a CRC or truncation error
        data = data[: len(data) // 2] + b"\xff" * 1024 + data[len(data) // 2 + 1024 :]
        with pytest.raises(zlib.error):
            gzip.decompress(data)
    path.write_bytes(data)


@pytest.mark.parametrize(
    "file, how",
    [
        ("t10k-labels-idx1-ubyte.gz", "one-label-changed"),
        ("t10k-labels-idx1-ubyte", "truncated"),
        ("train-labels-idx1-ubyte.gz", "truncated"),
        ("train-labels-idx1-ubyte.gz", "damaged-block"),
    ],
)
def test_a_damaged_file_is_named_with_the_reason(isolated, gz_copy, real_raw_dir, file, how):
    folder = gz_copy if file.endswith(".gz") else shutil.copytree(real_raw_dir, isolated / "plain")
    path = folder / file
    _damage(path, how)
    with pytest.raises(DataError) as err:
        FashionMNIST(root=folder, verbose=False)
    text = str(err.value)
    if how == "one-label-changed" or not file.endswith(".gz"):  # a readable file of other content
        content = gzip.decompress(path.read_bytes()) if file.endswith(".gz") else path.read_bytes()
        assert f"{path} is corrupt" in text and fm.FILES[file.removesuffix(".gz")] in text
        assert hashlib.sha256(content).hexdigest() in text
    else:
        assert f"{path} is not a readable gzip file (" in text and "Delete it" in text


def test_swapped_label_files_are_named_not_called_corrupt(isolated, gz_copy):
    train, test = gz_copy / "train-labels-idx1-ubyte.gz", gz_copy / "t10k-labels-idx1-ubyte.gz"
    train.rename(gz_copy / "swap")
    test.rename(train)
    (gz_copy / "swap").rename(test)
    with pytest.raises(DataError) as err:
        FashionMNIST(root=gz_copy, verbose=False)
    text = str(err.value)
    assert f"{train} holds the upstream t10k-labels-idx1-ubyte" in text
    assert "Rename it to t10k-labels-idx1-ubyte.gz" in text
    assert "corrupt" not in text and "Delete" not in text


# --- downloads: the last resort, verified, bounded in time, with the real cause ----------------


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves the folder under /ok/; under /silent/ it never answers, under /hang-up/ it hangs up
    without a status line, elsewhere it answers 404."""

    def do_GET(self):
        if self.path.startswith("/silent/"):
            time.sleep(1)
        elif self.path.startswith("/ok/"):
            self.path = self.path.removeprefix("/ok")
            super().do_GET()
        elif not self.path.startswith("/hang-up/"):
            self.send_error(404)


@pytest.fixture
def mirror(isolated, gz_copy, monkeypatch):
    """A local mirror serving the gzipped files under /ok/, put where torchvision looks for mirrors."""
    handler = functools.partial(_Mirror, directory=str(gz_copy))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"{url}ok/"])
    yield url
    server.shutdown()
    server.server_close()


def test_download_is_the_last_resort_and_is_verified(isolated, mirror):
    data = FashionMNIST(verbose=False)
    assert "download" in data.source and len(data.train) == 60000
    raw_dir = isolated / "cache" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(fm.FILES)  # no archive, no temporary file
    assert FashionMNIST(verbose=False).source.startswith(CACHED)  # found there next time


@pytest.mark.parametrize(
    "where, causes",
    [
        (None, ["refused"]),  # offline: the real cause, not only "Error downloading ..."
        ("silent/", ["timed out", "0.2 s"]),
        ("hang-up/", ["closed connection without response"]),
        ("missing/", ["404"]),
        ("ok/other/", ["the decompressed train-images-idx3-ubyte is corrupt"]),  # a file of other content
    ],
)
def test_failed_download_keeps_its_cause_and_names_the_three_ways(
    mirror, gz_copy, monkeypatch, where, causes
):
    (gz_copy / "other").mkdir()
    (gz_copy / "other" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not Fashion-MNIST"))
    monkeypatch.setattr(fm, "DOWNLOAD_TIMEOUT", 0.2)
    url = f"{mirror}{where}" if where else f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    text = str(err.value)
    assert all(cause in text for cause in causes) and f"{url}train-images-idx3-ubyte.gz" in text
    assert "apt-get install dataset-fashion-mnist" in text and "FASHION_MNIST_DIR" in text


# --- the cache: atomic, exclusive, no symbolic links, clear errors -----------------------------


def _fill(cache, source, barrier):
    os.environ["D2L_EXT_CACHE"] = str(cache)
    barrier.wait()
    fm.find_fashion_mnist(root=source)


def test_processes_filling_one_empty_cache_at_once(isolated, real_raw_dir, gz_copy):
    # one gzipped file sends all four through the cache; the big ones stay plain, quick to copy
    source = shutil.copytree(real_raw_dir, isolated / "mixed")
    (source / "t10k-labels-idx1-ubyte").unlink()
    shutil.copy(gz_copy / "t10k-labels-idx1-ubyte.gz", source)
    ctx = multiprocessing.get_context("fork")
    for attempt in range(6):
        cache, barrier = isolated / f"cache{attempt}", ctx.Barrier(3)
        procs = [ctx.Process(target=_fill, args=(cache, source, barrier)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0, 0, 0], f"attempt {attempt}"
        raw_dir = cache / "FashionMNIST" / "raw"
        assert sorted(os.listdir(raw_dir)) == sorted(fm.FILES)  # no temporary file left behind
        assert all(_sha256(raw_dir / name) == digest for name, digest in fm.FILES.items())


def test_symlinks_in_the_cache_are_neither_read_nor_written_through(offline, gz_copy):
    raw_dir = offline / "cache" / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    victims = []
    for name in fm.FILES:
        for planted in (raw_dir / f"{name}.tmp", raw_dir / name):  # a temporary name, the final name
            victim = offline / f"victim-{planted.name}"
            victim.write_bytes(b"someone else's file")
            planted.symlink_to(victim)
            victims.append(victim)
    with pytest.raises(DataError, match="could not be downloaded"):  # not "corrupt": never read
        FashionMNIST(verbose=False)
    assert fm.find_fashion_mnist(root=gz_copy)[0] == raw_dir
    assert all(v.read_bytes() == b"someone else's file" for v in victims)
    for name, digest in fm.FILES.items():
        assert not (raw_dir / name).is_symlink() and _sha256(raw_dir / name) == digest


@pytest.fixture
def blocker(isolated):
    """A regular file, so that a path under it can never be a folder (chmod stops nothing as root)."""
    path = isolated / "blocker"
    path.write_text("a file, not a folder")
    return path


def _denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied", kwargs.get("dir"))


@pytest.mark.parametrize(
    "unusable, reason",
    [
        ("under-a-file", "Not a directory"),
        ("a-file", "File exists"),
        ("a-linked-folder", "links are not followed"),
        ("unwritable", "Permission denied"),
    ],
)
def test_unusable_cache_says_why_and_to_set_d2l_ext_cache(blocker, gz_copy, monkeypatch, unusable, reason):
    elsewhere = blocker.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    if unusable == "under-a-file":
        monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    elif unusable == "a-file":
        monkeypatch.setenv("D2L_EXT_CACHE", str(blocker))
    elif unusable == "a-linked-folder":
        (blocker.parent / "cache").mkdir()
        (blocker.parent / "cache" / "FashionMNIST").symlink_to(elsewhere)
    else:
        monkeypatch.setattr(fm.tempfile, "mkstemp", _denied)
    for root in (gz_copy, None):  # gzipped files to store, or a download to store
        with pytest.raises(DataError) as err:
            FashionMNIST(root=root, verbose=False)
        text = str(err.value)
        if root is None and unusable == "unwritable":  # the folders are fine: it fails on the first file
            continue
        assert all(
            words in text for words in (reason, "D2L_EXT_CACHE", "writable folder", "FASHION_MNIST_DIR")
        )
        assert "refused" not in text  # reported before any download
    assert blocker.read_text() == "a file, not a folder" and list(elsewhere.iterdir()) == []

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

from d2l_ext import data as fm
from d2l_ext.data import DataError, FashionMNIST

CACHED = "the d2l_ext cache ("  # the source of files found in the cache, not downloaded into it


def _torchvision_split(raw_dir, train):
    """The reference: torchvision's own idx readers, as `torchvision.datasets.FashionMNIST` uses them."""
    prefix = "train" if train else "t10k"
    images = torchvision.datasets.mnist.read_image_file(str(raw_dir / f"{prefix}-images-idx3-ubyte"))
    return images, torchvision.datasets.mnist.read_label_file(str(raw_dir / f"{prefix}-labels-idx1-ubyte"))


def test_book_interface_and_batches():
    data = FashionMNIST(batch_size=100, resize=(32, 32), verbose=False)
    assert isinstance(data, d2l.FashionMNIST) and isinstance(data, d2l.DataModule)
    assert data.batch_size == 100 and data.resize == (32, 32)
    loader = data.train_dataloader()
    assert len(loader) == 600 and len(data.val_dataloader()) == 100
    X, y = next(iter(loader))
    assert X.shape == (100, 1, 32, 32) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert data.text_labels([0, 9]) == ["t-shirt", "ankle boot"]
    image, label = data.val[0]
    assert image.shape == (1, 32, 32) and int(label) == int(data.val.targets[0])


def test_pixels_equal_totensor_and_resize_matches_torchvision():
    data = FashionMNIST(batch_size=5, verbose=False)
    X, _ = next(iter(data.val_dataloader()))
    ref = torchvision.transforms.functional.to_tensor(data.val.images[0].numpy())
    torch.testing.assert_close(X[0], ref, rtol=0, atol=0)
    Xb, _ = next(iter(FashionMNIST(batch_size=5, resize=96, verbose=False).val_dataloader()))
    ref96 = torchvision.transforms.functional.resize(X, [96, 96], antialias=True)
    torch.testing.assert_close(Xb, ref96, rtol=0, atol=1e-5)


def test_normalize_uses_training_statistics():
    data = FashionMNIST(batch_size=60000, normalize=True, verbose=False)
    X, _ = next(iter(data.get_dataloader(train=False)))
    pixels = data.train.images.double() / 255
    assert abs(pixels.mean().item() - fm.MEAN) < 5e-5 and abs(pixels.std().item() - fm.STD) < 5e-5
    torch.testing.assert_close(X, (data.val.images[:, None].float() / 255 - fm.MEAN) / fm.STD)


def test_shuffle_is_seeded_reseedable_and_val_is_ordered():
    a, b = (FashionMNIST(batch_size=500, train_subset=2000, seed=3, verbose=False) for _ in range(2))
    loader = a.train_dataloader()
    first = list(loader)
    assert not torch.equal(first[0][1], next(iter(loader))[1])  # a new order each epoch
    assert torch.equal(next(iter(a.val_dataloader()))[1], a.val.targets[:500])
    epochs = [list(b.train_dataloader())]  # the same seed, the same order
    for _ in range(2):
        loader.reseed(3)  # the next epoch is a function of the seed alone
        epochs.append(list(loader))
    for other in epochs:
        assert all(torch.equal(X, Xo) and torch.equal(y, yo) for (X, y), (Xo, yo) in zip(first, other))
    assert len(first) == 4
    with pytest.raises(DataError, match=r"seed must be an int, e\.g\. 0; got seed=1\.5"):
        loader.reseed(1.5)


def test_balanced_subset_is_fixed_balanced_and_seen_once_per_epoch():
    data = FashionMNIST(batch_size=999, train_subset=10_000, val_subset=1_000, verbose=False)
    again = FashionMNIST(train_subset=10_000, val_subset=1_000, verbose=False)
    assert (torch.bincount(data.train.targets) == 1000).all()
    assert (torch.bincount(data.val.targets) == 100).all()
    assert torch.equal(data.train.images, again.train.images)
    seen = torch.cat([y for _, y in data.train_dataloader()])  # the last batch is a short one
    assert len(seen) == 10_000 and (torch.bincount(seen) == 1000).all()
    with pytest.raises(DataError, match="multiple of 10"):
        FashionMNIST(train_subset=1005, verbose=False)


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
        # taken as batches of one before it was refused
        ({"batch_size": True}, r"batch_size must be a positive int, e\.g\. 64; got batch_size=True"),
        # failed inside torch with "manual_seed expected a long, but got float" before
        ({"seed": 1.5}, r"seed must be an int, e\.g\. 0; got seed=1\.5"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(DataError, match=match):
        FashionMNIST(verbose=False, **kwargs)


def test_never_writes_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FashionMNIST(verbose=False)
    assert list(tmp_path.iterdir()) == []


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


def test_found_in_order_root_env_debian_cache(offline, gz_copy, monkeypatch, capsys):
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
    # the files decompressed into the cache are found next, without the original folder
    assert FashionMNIST(verbose=False).source.startswith(CACHED)


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


def test_tensors_are_the_upstream_files_not_legacy_processed_ones(offline, gz_copy, real_raw_dir):
    for name, digest in fm.FILES.items():  # the folder found the way users find it
        assert hashlib.sha256((real_raw_dir / name).read_bytes()).hexdigest() == digest
    # torchvision's FashionMNIST prefers <root>/FashionMNIST/processed/{training,test}.pt when present
    processed = offline / "cache" / "FashionMNIST" / "processed"
    processed.mkdir(parents=True)
    for file, n in (("training.pt", 60000), ("test.pt", 10000)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 3)), processed / file)
    for data in (FashionMNIST(root=gz_copy, verbose=False), FashionMNIST(verbose=False)):
        for train, split in ((True, data.train), (False, data.val)):
            images, targets = _torchvision_split(real_raw_dir, train)
            assert torch.equal(split.images, images) and torch.equal(split.targets, targets)
        assert data.train.images.dtype == torch.uint8 and data.train.targets.dtype == torch.int64
        fm._load.cache_clear()


# --- corrupt and misnamed files ----------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False], ids=["one-label-changed-gz", "truncated-plain"])
def test_corrupt_file_names_the_file_and_both_digests(isolated, gz_copy, real_raw_dir, gzipped):
    name = "t10k-labels-idx1-ubyte"
    if gzipped:
        folder, path = gz_copy, gz_copy / f"{name}.gz"
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[100] ^= 1
        path.write_bytes(gzip.compress(bytes(raw)))
    else:
        folder = isolated / "plain"
        shutil.copytree(real_raw_dir, folder)
        path = folder / name
        raw = path.read_bytes()[:-10]
        path.write_bytes(raw)
    with pytest.raises(DataError) as err:
        FashionMNIST(root=folder, verbose=False)
    text = str(err.value)
    assert f"{path} is corrupt" in text
    assert fm.FILES[name] in text and hashlib.sha256(bytes(raw)).hexdigest() in text


def _truncated(data):
    return data[: len(data) // 2]


def _damaged_block(data):
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 1024] = b"\xff" * 1024
    with pytest.raises(zlib.error):  # the case under test: not a CRC or truncation error
        gzip.decompress(damaged)
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_truncated, _damaged_block])
def test_unreadable_gzip_names_the_file(isolated, gz_copy, damage):
    path = gz_copy / "train-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is not a readable gzip file"):
        FashionMNIST(root=gz_copy, verbose=False)


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
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Mirror, directory=str(gz_copy))
    )
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
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(fm.FILES)  # archives removed
    assert FashionMNIST(verbose=False).source.startswith(CACHED)  # found there next time


def test_downloaded_file_that_differs_is_rejected(mirror, gz_copy):
    name = "train-labels-idx1-ubyte"
    raw = bytearray(gzip.decompress((gz_copy / f"{name}.gz").read_bytes()))
    raw[-1] ^= 1
    (gz_copy / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=f"{name} is corrupt"):
        FashionMNIST(verbose=False)


@pytest.mark.parametrize(
    "where, causes",
    [
        (None, ["refused"]),  # offline: the real cause, not only "Error downloading ..."
        ("silent/", ["timed out", "0.2 s"]),
        ("hang-up/", ["closed connection without response"]),
        ("missing/", ["404"]),
    ],
)
def test_failed_download_keeps_its_cause_and_names_the_three_ways(mirror, monkeypatch, where, causes):
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
    source = isolated / "mixed"
    shutil.copytree(real_raw_dir, source)
    (source / "t10k-labels-idx1-ubyte").unlink()
    shutil.copy(gz_copy / "t10k-labels-idx1-ubyte.gz", source)
    ctx = multiprocessing.get_context("fork")
    for attempt in range(6):
        cache = isolated / f"cache{attempt}"
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_fill, args=(cache, source, barrier)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0, 0, 0], f"attempt {attempt}"
        raw_dir = cache / "FashionMNIST" / "raw"
        assert sorted(os.listdir(raw_dir)) == sorted(fm.FILES)  # no temporary file left behind
        for name, digest in fm.FILES.items():
            assert hashlib.sha256((raw_dir / name).read_bytes()).hexdigest() == digest


def test_symlinks_planted_in_the_cache_are_not_written_through(isolated, gz_copy):
    raw_dir = isolated / "cache" / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    victims = []
    for name in fm.FILES:
        for planted in (raw_dir / f"{name}.tmp", raw_dir / name):  # a temporary name, the final name
            victim = isolated / f"victim-{planted.name}"
            victim.write_bytes(b"someone else's file")
            planted.symlink_to(victim)
            victims.append(victim)
    assert fm.find_fashion_mnist(root=gz_copy)[0] == raw_dir
    assert all(v.read_bytes() == b"someone else's file" for v in victims)
    for name, digest in fm.FILES.items():
        assert not (raw_dir / name).is_symlink()
        assert hashlib.sha256((raw_dir / name).read_bytes()).hexdigest() == digest


def test_symlinks_in_the_cache_are_not_read(offline, real_raw_dir):
    raw_dir = offline / "cache" / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name in fm.FILES:
        (raw_dir / name).symlink_to(real_raw_dir / name)
    with pytest.raises(DataError, match="could not be downloaded"):
        FashionMNIST(verbose=False)


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
    if unusable == "under-a-file":
        monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    elif unusable == "a-file":
        monkeypatch.setenv("D2L_EXT_CACHE", str(blocker))
    elif unusable == "a-linked-folder":
        (blocker.parent / "cache").mkdir()
        (blocker.parent / "cache" / "FashionMNIST").symlink_to(elsewhere)
    else:
        monkeypatch.setattr(fm.tempfile, "mkstemp", _denied)
    with pytest.raises(DataError) as err:
        FashionMNIST(root=gz_copy, verbose=False)
    text = str(err.value)
    assert all(words in text for words in (reason, "D2L_EXT_CACHE", "writable folder", "FASHION_MNIST_DIR"))
    assert blocker.read_text() == "a file, not a folder" and list(elsewhere.iterdir()) == []


def test_unusable_cache_is_reported_before_any_download(blocker, offline, monkeypatch):
    monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    assert "D2L_EXT_CACHE" in str(err.value) and "refused" not in str(err.value)

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


def test_files_match_upstream_digests(real_raw_dir):
    for name, digest in fm.FILES.items():
        assert hashlib.sha256((real_raw_dir / name).read_bytes()).hexdigest() == digest


def _torchvision_split(raw_dir, train):
    """The reference: torchvision's own idx readers, as `torchvision.datasets.FashionMNIST` uses them."""
    prefix = "train" if train else "t10k"
    images = torchvision.datasets.mnist.read_image_file(str(raw_dir / f"{prefix}-images-idx3-ubyte"))
    return images, torchvision.datasets.mnist.read_label_file(str(raw_dir / f"{prefix}-labels-idx1-ubyte"))


def test_same_tensors_as_torchvision(real_raw_dir):
    data = FashionMNIST(batch_size=32, verbose=False)
    images, targets = _torchvision_split(real_raw_dir, train=False)
    assert torch.equal(data.val.images, images) and torch.equal(data.val.targets, targets)
    assert data.train.images.shape == (60000, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.train.targets.dtype == torch.int64


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
    big = FashionMNIST(batch_size=5, resize=96, verbose=False)
    Xb, _ = next(iter(big.val_dataloader()))
    ref96 = torchvision.transforms.functional.resize(X, [96, 96], antialias=True)
    torch.testing.assert_close(Xb, ref96, rtol=0, atol=1e-5)


def test_normalize_uses_training_statistics():
    data = FashionMNIST(batch_size=60000, normalize=True, verbose=False)
    X, _ = next(iter(data.get_dataloader(train=False)))
    pixels = data.train.images.double() / 255
    assert abs(pixels.mean().item() - fm.MEAN) < 5e-5 and abs(pixels.std().item() - fm.STD) < 5e-5
    torch.testing.assert_close(X, (data.val.images[:, None].float() / 255 - fm.MEAN) / fm.STD)


def test_shuffle_is_seeded_and_val_is_ordered():
    a = FashionMNIST(batch_size=64, seed=3, verbose=False)
    b = FashionMNIST(batch_size=64, seed=3, verbose=False)
    ya, yb = next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1]
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, next(iter(a.train_dataloader()))[1])  # a new order each epoch
    assert torch.equal(next(iter(a.val_dataloader()))[1], a.val.targets[:64])


def test_every_example_once_per_epoch():
    data = FashionMNIST(batch_size=999, train_subset=5000, verbose=False)
    seen = torch.cat([y for _, y in data.train_dataloader()])
    assert len(seen) == 5000
    assert torch.equal(torch.bincount(seen), torch.bincount(data.train.targets))


def test_balanced_subset_is_fixed_and_balanced():
    data = FashionMNIST(train_subset=10_000, val_subset=1_000, verbose=False)
    again = FashionMNIST(train_subset=10_000, val_subset=1_000, verbose=False)
    assert (torch.bincount(data.train.targets) == 1000).all()
    assert (torch.bincount(data.val.targets) == 100).all()
    assert torch.equal(data.train.images, again.train.images)
    with pytest.raises(DataError, match="multiple of 10"):
        FashionMNIST(train_subset=1005, verbose=False)


def test_found_in_order_root_env_debian(isolated, gz_copy, monkeypatch, capsys):
    data = FashionMNIST(root=gz_copy, verbose=True)
    assert "root argument" in data.source and "checksums verified" in capsys.readouterr().out
    monkeypatch.setenv("FASHION_MNIST_DIR", str(gz_copy))
    assert "$FASHION_MNIST_DIR" in FashionMNIST(verbose=False).source
    monkeypatch.delenv("FASHION_MNIST_DIR")
    monkeypatch.setattr(fm, "DEBIAN_DIR", gz_copy)
    assert "dataset-fashion-mnist" in FashionMNIST(verbose=False).source
    monkeypatch.setattr(fm, "DEBIAN_DIR", isolated / "gone")
    # the files decompressed into the cache are found next, without the original folder
    assert "cache" in FashionMNIST(verbose=False, download=False).source


def test_plain_idx_files_are_accepted(isolated, real_raw_dir):
    folder = isolated / "plain"
    shutil.copytree(real_raw_dir, folder)
    assert "root argument" in FashionMNIST(root=folder, verbose=False).source


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once, as offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_found_and_no_network_names_the_three_ways(isolated, monkeypatch, closed_port):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{closed_port}/"])
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert "FASHION_MNIST_DIR" in text and "download" in text
    assert "refused" in text  # the real cause, not only "Error downloading ..."


@pytest.fixture
def mirror(gz_copy, monkeypatch):
    """A local HTTP mirror serving the gzipped files, put where torchvision looks for mirrors."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(gz_copy))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    resources = [(f"{n}.gz", hashlib.md5((gz_copy / f"{n}.gz").read_bytes()).hexdigest()) for n in fm.FILES]
    monkeypatch.setattr(
        torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"]
    )
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    yield gz_copy
    server.shutdown()
    server.server_close()


def test_download_is_the_last_resort_and_is_verified(isolated, mirror):
    data = FashionMNIST(verbose=False)
    assert "download" in data.source and len(data.train) == 60000
    raw_dir = isolated / "cache" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(fm.FILES)  # archives removed
    assert "cache" in FashionMNIST(verbose=False, download=False).source  # found there next time


def test_downloaded_file_that_differs_is_rejected(isolated, mirror):
    name = "train-labels-idx1-ubyte"
    raw = bytearray(gzip.decompress((mirror / f"{name}.gz").read_bytes()))
    raw[-1] ^= 1
    (mirror / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    resources = [(f"{n}.gz", hashlib.md5((mirror / f"{n}.gz").read_bytes()).hexdigest()) for n in fm.FILES]
    torchvision.datasets.FashionMNIST.resources = resources  # restored by monkeypatch afterwards
    with pytest.raises(DataError, match=f"{name} is corrupt"):
        FashionMNIST(verbose=False)


def test_download_disabled_says_how(isolated):
    with pytest.raises(DataError, match="download=False"):
        FashionMNIST(download=False, verbose=False)


def test_altered_file_names_file_and_both_digests(isolated, gz_copy):
    name = "t10k-labels-idx1-ubyte"
    raw = bytearray(gzip.decompress((gz_copy / f"{name}.gz").read_bytes()))
    raw[100] ^= 1  # one label changed
    (gz_copy / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as err:
        FashionMNIST(root=gz_copy, verbose=False)
    text = str(err.value)
    assert f"{name}.gz is corrupt" in text
    assert fm.FILES[name] in text and hashlib.sha256(bytes(raw)).hexdigest() in text


def test_truncated_gzip_names_the_file(isolated, gz_copy):
    path = gz_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a readable gzip file"):
        FashionMNIST(root=gz_copy, verbose=False)


def test_truncated_plain_file_names_the_file_and_digests(isolated, real_raw_dir):
    folder = isolated / "plain"
    shutil.copytree(real_raw_dir, folder)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is corrupt(.|\n)*bad3541b"):
        FashionMNIST(root=folder, verbose=False)


def test_incomplete_root_lists_the_missing_files(isolated, gz_copy):
    (gz_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte"):
        FashionMNIST(root=gz_copy, verbose=False)


@pytest.mark.parametrize(
    "resize, reason",
    [
        (0, "empty image"),
        ((28, -1), "empty image"),
        ((28,), "pair of ints"),
        (2.5, "pair of ints"),
        ("96", "pair of ints"),
        (4096, "million pixels"),
    ],
)
def test_impossible_resize_is_refused_with_the_reason(resize, reason):
    with pytest.raises(DataError, match=reason):
        FashionMNIST(resize=resize, verbose=False)


def test_bad_batch_size_is_refused():
    with pytest.raises(DataError, match="batch_size must be a positive int"):
        FashionMNIST(batch_size=0, verbose=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": True}, r"batch_size must be a positive int, e\.g\. 64; got batch_size=True"),
        ({"seed": 1.5}, r"seed must be an int, e\.g\. 0; got seed=1\.5"),
    ],
)
def test_a_bool_batch_size_or_a_float_seed_is_refused(kwargs, match):
    # batch_size=True used to be taken as batches of one; seed=1.5 failed inside torch with
    # "manual_seed expected a long, but got float".
    with pytest.raises(DataError, match=match):
        FashionMNIST(verbose=False, **kwargs)


def test_never_writes_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FashionMNIST(verbose=False)
    assert list(tmp_path.iterdir()) == []


# --- what reaches the notebooks is the verified idx bytes --------------------------------------


def test_legacy_processed_files_in_the_cache_are_ignored(isolated, gz_copy, real_raw_dir):
    # torchvision's FashionMNIST prefers <root>/FashionMNIST/processed/{training,test}.pt when present
    processed = isolated / "cache" / "FashionMNIST" / "processed"
    processed.mkdir(parents=True)
    for file, n in (("training.pt", 60000), ("test.pt", 10000)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 3)), processed / file)
    for data in (FashionMNIST(root=gz_copy, verbose=False), FashionMNIST(verbose=False, download=False)):
        for train, split in ((True, data.train), (False, data.val)):
            images, targets = _torchvision_split(real_raw_dir, train)
            assert torch.equal(split.images, images) and torch.equal(split.targets, targets)
        fm._load.cache_clear()


def test_two_data_modules_share_one_load(isolated, gz_copy):
    first, second = FashionMNIST(root=gz_copy, verbose=False), FashionMNIST(root=gz_copy, verbose=False)
    assert second.train.images.data_ptr() == first.train.images.data_ptr()  # parsed once, in memory


# --- downloads: bounded in time, with the real cause -------------------------------------------


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers; it stops by itself after 10 s."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop, held = threading.Event(), []

    def serve():
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                pass
        for conn in held:
            conn.close()
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    stop.set()
    thread.join()


def test_download_that_never_answers_times_out(isolated, silent_server, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [silent_server])
    monkeypatch.setattr(fm, "DOWNLOAD_TIMEOUT", 0.2, raising=False)
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    text = str(err.value)
    assert "timed out" in text and "0.2 s" in text and silent_server in text
    assert "apt-get install dataset-fashion-mnist" in text


class _Closing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.close_connection = True  # hang up without a status line


@pytest.mark.parametrize(
    "handler, cause",
    [
        (functools.partial(http.server.SimpleHTTPRequestHandler, directory="/nonexistent"), "404"),
        (_Closing, "closed connection without response"),
    ],
)
def test_failed_download_keeps_its_cause(isolated, monkeypatch, handler, cause):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    try:
        with pytest.raises(DataError) as err:
            FashionMNIST(verbose=False)
    finally:
        server.shutdown()
        server.server_close()
    text = str(err.value)
    assert cause in text and f"{url}train-images-idx3-ubyte.gz" in text


# --- the cache: atomic, exclusive, no symbolic links, clear errors -----------------------------


def _fill(cache, source, barrier):
    os.environ["D2L_EXT_CACHE"] = str(cache)
    barrier.wait()
    fm.find_fashion_mnist(root=source, download=False)


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
    raw_dir_found, _ = fm.find_fashion_mnist(root=gz_copy, download=False)
    assert all(v.read_bytes() == b"someone else's file" for v in victims)
    for name, digest in fm.FILES.items():
        assert not (raw_dir / name).is_symlink()
        assert hashlib.sha256((raw_dir / name).read_bytes()).hexdigest() == digest
    assert raw_dir_found == raw_dir


def test_symlinks_in_the_cache_are_not_read(isolated, real_raw_dir):
    elsewhere = isolated / "elsewhere"
    shutil.copytree(real_raw_dir, elsewhere)
    raw_dir = isolated / "cache" / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name in fm.FILES:
        (raw_dir / name).symlink_to(elsewhere / name)
    with pytest.raises(DataError, match="download=False"):
        FashionMNIST(verbose=False, download=False)


def test_symlinked_folder_in_the_cache_is_refused(isolated, gz_copy):
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    (isolated / "cache").mkdir()
    (isolated / "cache" / "FashionMNIST").symlink_to(elsewhere)
    with pytest.raises(DataError, match=r"links are not followed(.|\n)*D2L_EXT_CACHE"):
        FashionMNIST(root=gz_copy, verbose=False)
    assert list(elsewhere.iterdir()) == []


@pytest.fixture
def blocker(isolated):
    """A regular file, so that a path under it can never be a folder (chmod stops nothing as root)."""
    path = isolated / "blocker"
    path.write_text("a file, not a folder")
    return path


@pytest.mark.parametrize("under", [True, False], ids=["path-under-a-file", "path-is-a-file"])
def test_cache_that_is_not_a_folder_says_to_set_d2l_ext_cache(blocker, gz_copy, monkeypatch, under):
    monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache" if under else blocker))
    with pytest.raises(DataError) as err:
        FashionMNIST(root=gz_copy, verbose=False)
    text = str(err.value)
    assert "D2L_EXT_CACHE" in text and "writable folder" in text and "FASHION_MNIST_DIR" in text
    assert blocker.read_text() == "a file, not a folder"


def test_unwritable_cache_says_to_set_d2l_ext_cache(isolated, gz_copy, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(fm.tempfile, "mkstemp", denied)
    with pytest.raises(DataError, match=r"Permission denied(.|\n)*D2L_EXT_CACHE(.|\n)*writable folder"):
        FashionMNIST(root=gz_copy, verbose=False)


def test_unusable_cache_is_reported_before_any_download(blocker, monkeypatch, closed_port):
    monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{closed_port}/"])
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    assert "D2L_EXT_CACHE" in str(err.value) and "refused" not in str(err.value)


def test_plain_files_are_read_in_place_without_a_cache(blocker, real_raw_dir, monkeypatch):
    folder = blocker.parent / "plain"
    shutil.copytree(real_raw_dir, folder)
    monkeypatch.setenv("D2L_EXT_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert fm.find_fashion_mnist() == (folder, f"$FASHION_MNIST_DIR ({folder})")
    data = FashionMNIST(verbose=False)
    assert len(data.train) == 60000 and "$FASHION_MNIST_DIR" in data.source


# --- corrupt and misnamed files ----------------------------------------------------------------


def test_corrupt_deflate_block_names_the_file(isolated, gz_copy):
    path = gz_copy / "train-labels-idx1-ubyte.gz"
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 1024] = b"\xff" * 1024
    with pytest.raises(zlib.error):  # the case under test: not a CRC or truncation error
        gzip.decompress(damaged)
    path.write_bytes(damaged)
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


# --- reseeding -----------------------------------------------------------------------------------


def test_reseed_makes_the_next_epoch_a_function_of_the_seed():
    data = FashionMNIST(batch_size=500, train_subset=2000, seed=3, verbose=False)
    loader = data.train_dataloader()
    next(iter(loader))  # the generator has moved on from seed 3
    epochs = []
    for _ in range(2):
        loader.reseed(3)
        epochs.append(list(loader))
    fresh = FashionMNIST(batch_size=500, train_subset=2000, seed=3, verbose=False)
    epochs.append(list(fresh.train_dataloader()))
    for other in epochs[1:]:
        assert all(torch.equal(X, Xo) and torch.equal(y, yo) for (X, y), (Xo, yo) in zip(epochs[0], other))
    assert len(epochs[0]) == 4

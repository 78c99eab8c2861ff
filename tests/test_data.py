"""d2l_ext.data: finding, verifying and batching the real Fashion-MNIST, and its clear errors."""

import functools
import gzip
import hashlib
import http.server
import shutil
import threading

import pytest
import torch
import torchvision
from d2l import torch as d2l

from d2l_ext import data as fm
from d2l_ext.data import DataError, FashionMNIST


def test_files_match_upstream_digests(real_raw_dir):
    for name, digest in fm.FILES.items():
        assert hashlib.sha256((real_raw_dir / name).read_bytes()).hexdigest() == digest


def test_same_tensors_as_torchvision(real_raw_dir):
    data = FashionMNIST(batch_size=32, verbose=False)
    ref = torchvision.datasets.FashionMNIST(str(real_raw_dir.parent.parent), train=False)
    assert torch.equal(data.val.images, ref.data) and torch.equal(data.val.targets, ref.targets)
    assert data.train.images.shape == (60000, 28, 28) and data.train.images.dtype == torch.uint8


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


def test_flip_augments_training_batches_only():
    data = FashionMNIST(batch_size=256, flip=True, seed=0, verbose=False)
    assert data.train_dataloader().flip and not data.val_dataloader().flip


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


def test_nothing_found_and_no_network_names_the_three_ways(isolated, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as err:
        FashionMNIST(verbose=False)
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert "FASHION_MNIST_DIR" in text and "download" in text


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


def test_never_writes_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FashionMNIST(verbose=False)
    assert list(tmp_path.iterdir()) == []

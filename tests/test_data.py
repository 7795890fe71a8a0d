"""Tests for synflow_plugin.data: offline loaders, the CIFAR reader, batching."""

from __future__ import annotations

import pickle
import random
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from synflow_plugin.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    calibration_batches,
    load_cifar,
    load_dataset,
    load_digits,
    load_mnist1d,
    make_loader,
)
from synflow_plugin.errors import PruningError, PruningTypeError

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    try:
        import requests
    except ImportError:  # pragma: no cover
        pass
    else:
        monkeypatch.setattr(requests.Session, "request", refuse)


def _images(n: int, seed: int) -> np.ndarray:
    """n random CIFAR rows that are sure to contain both 0 and 255."""
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0, 0] = 0
    data[0, 1] = 255
    return data


def _dump(path: Path, blob: dict, protocol: int = 2) -> None:
    # The official archives are Python-2 cPickle files, protocol 2, bytes keys.
    with open(path, "wb") as handle:
        pickle.dump(blob, handle, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4) -> dict:
    """Write a tiny but exactly-formatted cifar-10-batches-py under root."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    expected = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        data = _images(per_batch, seed=i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        _dump(
            directory / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
        expected["train_x"].append(data)
        expected["train_y"].extend(labels)
    test_data = _images(3, seed=99)
    test_labels = [9, 0, 5]
    _dump(
        directory / "test_batch",
        {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test_data,
         b"filenames": [b"a.png", b"b.png", b"c.png"]},
    )
    expected["train_x"] = np.concatenate(expected["train_x"])
    expected["test_x"] = test_data
    expected["test_y"] = test_labels
    expected["dir"] = directory
    return expected


def write_cifar100(root: Path) -> dict:
    """Write a tiny but exactly-formatted cifar-100-python under root."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    train_x, test_x = _images(6, seed=7), _images(2, seed=8)
    train_y, test_y = [0, 99, 42, 7, 63, 1], [99, 3]
    for name, data, fine in (("train", train_x, train_y), ("test", test_x, test_y)):
        _dump(
            directory / name,
            {b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(),
             b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data},
        )
    return {"dir": directory, "train_x": train_x, "train_y": train_y,
            "test_x": test_x, "test_y": test_y}


def as_uint8_images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data).reshape(-1, 3, 32, 32)


# --------------------------------------------------------------------------- #
# registry
# --------------------------------------------------------------------------- #


def test_registry_lists_the_four_datasets():
    assert sorted(DATASETS) == ["cifar10", "cifar100", "digits", "mnist1d"]
    assert DATASETS["mnist1d"].input_shape == (1, 40)
    assert DATASETS["digits"].input_shape == (1, 8, 8)
    assert DATASETS["cifar10"].input_shape == (3, 32, 32)
    assert DATASETS["cifar100"].num_classes == 100
    assert [DATASETS[n].needs_root for n in ("mnist1d", "digits", "cifar10", "cifar100")] == [
        False, False, True, True,
    ]
    with pytest.raises(TypeError):
        DATASETS["new"] = DATASETS["digits"]  # read-only


def test_load_dataset_unknown_name_lists_valid_names():
    with pytest.raises(PruningError, match="unknown dataset 'imagenet'.*cifar10, cifar100, digits, mnist1d"):
        load_dataset("imagenet")
    with pytest.raises(PruningTypeError):
        load_dataset(10)


def test_load_dataset_cifar_needs_root():
    with pytest.raises(PruningError, match=r"root=.*cifar-10-batches-py.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10")


# --------------------------------------------------------------------------- #
# MNIST-1D
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def mnist1d_small():
    return load_mnist1d(num_samples=100, seed=3)


def test_mnist1d_shapes_dtypes_labels(mnist1d_small):
    train, test = mnist1d_small
    x, y = train.tensors
    xt, yt = test.tensors
    assert x.shape == (80, 1, 40) and xt.shape == (20, 1, 40)
    assert x.dtype == xt.dtype == torch.float32
    assert y.dtype == yt.dtype == torch.int64
    labels = torch.cat([y, yt])
    # The generator makes exactly num_samples // 10 of each class before splitting.
    assert torch.bincount(labels, minlength=10).tolist() == [10] * 10
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.isfinite(x).all()
    # The generator standardises the whole set.
    everything = torch.cat([x, xt])
    assert abs(float(everything.mean())) < 1e-4
    assert abs(float(everything.std(unbiased=False)) - 1.0) < 1e-4


def test_mnist1d_matches_the_mnist1d_generator(mnist1d_small):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 100, 3
    state = np.random.get_state()
    raw = make_dataset(args)
    np.random.set_state(state)
    train, test = mnist1d_small
    assert torch.equal(train.tensors[0][:, 0], torch.from_numpy(raw["x"].astype(np.float32)))
    assert torch.equal(test.tensors[0][:, 0], torch.from_numpy(raw["x_test"].astype(np.float32)))
    assert train.tensors[1].tolist() == raw["y"].tolist()
    assert test.tensors[1].tolist() == raw["y_test"].tolist()


def test_mnist1d_default_size_is_4000_train_1000_test(monkeypatch):
    import mnist1d.data

    seen = {}
    real = mnist1d.data.make_dataset

    def spy(args, *rest, **kw):
        seen["num_samples"], seen["split"] = args.num_samples, args.train_split
        args.num_samples = 50  # keep the test fast; the split logic is the generator's
        return real(args, *rest, **kw)

    monkeypatch.setattr(mnist1d.data, "make_dataset", spy)
    load_mnist1d()
    assert seen == {"num_samples": 5000, "split": 0.8}
    assert int(5000 * 0.8) == 4000


def test_mnist1d_deterministic(mnist1d_small):
    again_train, again_test = load_mnist1d(num_samples=100, seed=3)
    train, test = mnist1d_small
    for a, b in zip(train.tensors + test.tensors, again_train.tensors + again_test.tensors):
        assert torch.equal(a, b)
    other_train, _ = load_mnist1d(num_samples=100, seed=4)
    assert not torch.equal(other_train.tensors[0], train.tensors[0])


def test_mnist1d_offline_writes_nothing_and_keeps_global_rng(no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mnist1d.get_dataset would drop a pickle here
    saved_py, saved_np = random.getstate(), np.random.get_state()
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    train, test = load_mnist1d(num_samples=20, seed=0)
    assert len(train) == 16 and len(test) == 4
    assert random.random() == expected_py
    assert np.random.rand() == expected_np
    assert list(tmp_path.iterdir()) == []
    random.setstate(saved_py)
    np.random.set_state(saved_np)


def test_mnist1d_cache_dir(tmp_path, monkeypatch, mnist1d_small):
    cache = tmp_path / "cache"
    train, test = load_mnist1d(num_samples=100, seed=3, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["mnist1d_seed3_n100.pt"]
    assert torch.equal(train.tensors[0], mnist1d_small[0].tensors[0])

    import mnist1d.data

    def boom(*a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    cached_train, cached_test = load_mnist1d(num_samples=100, seed=3, cache_dir=cache)
    assert torch.equal(cached_train.tensors[0], train.tensors[0])
    assert torch.equal(cached_test.tensors[1], test.tensors[1])
    # load_dataset forwards root as the cache directory
    via_name, _ = load_dataset("MNIST-1D", root=cache, num_samples=100, seed=3)
    assert torch.equal(via_name.tensors[0], train.tensors[0])

    # a damaged cache is regenerated, not trusted
    monkeypatch.undo()
    (cache / "mnist1d_seed3_n100.pt").write_bytes(b"garbage")
    regenerated, _ = load_mnist1d(num_samples=100, seed=3, cache_dir=cache)
    assert torch.equal(regenerated.tensors[0], train.tensors[0])


@pytest.mark.parametrize("bad", [0, 5, 15, -10])
def test_mnist1d_bad_num_samples(bad):
    with pytest.raises(PruningError, match="num_samples"):
        load_mnist1d(num_samples=bad)


def test_mnist1d_bad_types():
    with pytest.raises(PruningTypeError, match="num_samples must be an int"):
        load_mnist1d(num_samples="100")
    with pytest.raises(PruningTypeError, match="seed must be an int"):
        load_mnist1d(seed=1.5)


# --------------------------------------------------------------------------- #
# scikit-learn digits
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_dtypes_range(digits):
    train, test = digits
    x, y = train.tensors
    xt, yt = test.tensors
    assert x.shape == (1438, 1, 8, 8) and xt.shape == (359, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    everything = torch.cat([x, xt])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    # raw pixels are the integers 0..16
    assert torch.equal(everything * 16, (everything * 16).round())
    assert sorted(torch.cat([y, yt]).unique().tolist()) == list(range(10))


def test_digits_is_the_sklearn_data_and_stratified(digits):
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    train, test = digits
    counts = np.bincount(bunch.target, minlength=10)
    test_counts = torch.bincount(test.tensors[1], minlength=10).numpy()
    train_counts = torch.bincount(train.tensors[1], minlength=10).numpy()
    assert (train_counts + test_counts).tolist() == counts.tolist()
    assert test_counts.tolist() == [int(round(0.2 * c)) for c in counts]
    # The union of both splits is exactly the sklearn image multiset.
    ours = torch.cat([train.tensors[0], test.tensors[0]]).reshape(-1, 64) * 16
    ours_sorted = sorted(map(tuple, ours.round().to(torch.int64).tolist()))
    theirs_sorted = sorted(map(tuple, bunch.data.astype(np.int64).tolist()))
    assert ours_sorted == theirs_sorted


def test_digits_deterministic_and_seeded(digits):
    train, test = digits
    again_train, again_test = load_digits(seed=0)
    assert torch.equal(train.tensors[0], again_train.tensors[0])
    assert torch.equal(test.tensors[1], again_test.tensors[1])
    other_train, _ = load_digits(seed=1)
    assert not torch.equal(other_train.tensors[0], train.tensors[0])
    small_train, small_test = load_dataset("digits", test_fraction=0.5)
    assert len(small_train) + len(small_test) == 1797
    assert abs(len(small_test) - 898) <= 5


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5])
def test_digits_bad_fraction(bad):
    with pytest.raises(PruningError, match="test_fraction must be strictly between 0 and 1"):
        load_digits(test_fraction=bad)


# --------------------------------------------------------------------------- #
# CIFAR reader
# --------------------------------------------------------------------------- #


def test_cifar10_round_trip_unnormalised(tmp_path):
    exp = write_cifar10(tmp_path)
    train = load_cifar(tmp_path, train=True, normalize=False)
    x, y = train.tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == exp["train_y"]
    assert torch.equal(x, as_uint8_images(exp["train_x"]).to(torch.float32) / 255.0)
    assert torch.equal((x * 255).round().to(torch.uint8), as_uint8_images(exp["train_x"]))

    test = load_cifar(tmp_path, train=False, normalize=False)
    assert test.tensors[1].tolist() == [9, 0, 5]
    assert torch.equal((test.tensors[0] * 255).round().to(torch.uint8), as_uint8_images(exp["test_x"]))


def test_cifar10_plane_layout(tmp_path):
    # One pure-red image: the first 1024 bytes of a row are the red plane.
    exp = write_cifar10(tmp_path)
    data = np.zeros((1, 3072), dtype=np.uint8)
    data[0, :1024] = 255
    data[0, 2048 + 5] = 51  # blue plane, row 0, column 5
    _dump(exp["dir"] / "test_batch", {b"data": data, b"labels": [3]})
    x, y = load_cifar(exp["dir"], train=False, normalize=False).tensors
    assert torch.equal(x[0, 0], torch.ones(32, 32))
    assert float(x[0, 1].abs().sum()) == 0.0
    assert float(x[0, 2, 0, 5]) == pytest.approx(0.2) and float(x[0, 2].sum()) == pytest.approx(0.2)
    assert y.tolist() == [3]


def test_cifar10_normalised_round_trip(tmp_path):
    exp = write_cifar10(tmp_path)
    x, _ = load_cifar(tmp_path).tensors
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    pixels = x * std + mean
    assert torch.allclose(pixels, as_uint8_images(exp["train_x"]).float() / 255, atol=1e-6)
    assert torch.equal((pixels * 255).round().to(torch.uint8), as_uint8_images(exp["train_x"]))
    # the red plane of pixel 0 of image 0 is 0 -> -mean/std exactly as documented
    assert float(x[0, 0, 0, 0]) == pytest.approx(-CIFAR10_MEAN[0] / CIFAR10_STD[0])


def test_cifar_root_may_be_the_batches_directory(tmp_path):
    exp = write_cifar10(tmp_path)
    via_parent = load_cifar(tmp_path, train=False)
    via_dir = load_cifar(exp["dir"], train=False)
    via_str = load_cifar(str(exp["dir"]), train=False)
    assert torch.equal(via_parent.tensors[0], via_dir.tensors[0])
    assert torch.equal(via_parent.tensors[0], via_str.tensors[0])


def test_cifar100_round_trip(tmp_path):
    exp = write_cifar100(tmp_path)
    train = load_cifar(tmp_path, num_classes=100, normalize=False)
    assert train.tensors[0].shape == (6, 3, 32, 32)
    assert train.tensors[1].tolist() == [0, 99, 42, 7, 63, 1]  # fine, not coarse, labels
    assert torch.equal((train.tensors[0] * 255).round().to(torch.uint8), as_uint8_images(exp["train_x"]))
    test = load_cifar(exp["dir"], num_classes=100, train=False)
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    back = ((test.tensors[0] * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(back, as_uint8_images(exp["test_x"]))
    assert test.tensors[1].tolist() == [99, 3]


def test_load_dataset_cifar_both_splits(tmp_path):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    train, test = load_dataset("CIFAR-10", root=tmp_path, normalize=False)
    assert (len(train), len(test)) == (20, 3)
    assert tuple(train.tensors[0].shape[1:]) == DATASETS["cifar10"].input_shape
    train100, test100 = load_dataset("cifar100", root=tmp_path)
    assert (len(train100), len(test100)) == (6, 2)


def test_cifar_reads_numpy1_era_pickles(tmp_path):
    # The official archives name numpy.core.multiarray (NumPy 1); NumPy 2 writes
    # numpy._core. Protocol-2 GLOBAL opcodes are plain text, so rewrite them.
    exp = write_cifar10(tmp_path)
    data = _images(2, seed=5)
    raw = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (exp["dir"] / "test_batch").write_bytes(legacy)
    x, y = load_cifar(tmp_path, train=False, normalize=False).tensors
    assert torch.equal((x * 255).round().to(torch.uint8), as_uint8_images(data))
    assert y.tolist() == [1, 2]


def test_cifar_accepts_str_keys_and_array_labels(tmp_path):
    exp = write_cifar10(tmp_path)
    data = _images(2, seed=6)
    _dump(exp["dir"] / "test_batch", {"data": data, "labels": np.array([4, 8], dtype=np.int32)}, protocol=4)
    _, y = load_cifar(tmp_path, train=False).tensors
    assert y.dtype == torch.int64 and y.tolist() == [4, 8]


# --------------------------------------------------------------------------- #
# CIFAR error paths
# --------------------------------------------------------------------------- #


def test_cifar_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PruningError) as info:
        load_cifar(missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "data_batch_1" in message and "test_batch" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "never downloaded" in message


def test_cifar_empty_directory(tmp_path):
    with pytest.raises(PruningError, match=re.escape(str(tmp_path)) + ".*holds no CIFAR files"):
        load_cifar(tmp_path)
    with pytest.raises(PruningError, match=r"cifar-100-python.*train, test.*cifar-100-python\.tar\.gz"):
        load_cifar(tmp_path, num_classes=100)


def test_cifar_missing_file(tmp_path):
    exp = write_cifar10(tmp_path)
    (exp["dir"] / "data_batch_3").unlink()
    with pytest.raises(PruningError, match=re.escape(str(exp["dir"])) + r" is missing data_batch_3 "):
        load_cifar(tmp_path)
    # only the requested split's files are required
    assert len(load_cifar(tmp_path, train=False)) == 3


@pytest.mark.parametrize(
    "content",
    [b"this is not a pickle", b"", b"\x80\x02}q\x00(U\x04data"],  # garbage, empty, truncated
    ids=["garbage", "empty", "truncated"],
)
def test_cifar_corrupt_pickle(tmp_path, content):
    exp = write_cifar10(tmp_path)
    (exp["dir"] / "test_batch").write_bytes(content)
    with pytest.raises(PruningError, match=re.escape(str(exp["dir"] / "test_batch")) + " is corrupt"):
        load_cifar(tmp_path, train=False)


class _Exploit:
    calls = []

    def __reduce__(self):
        return (_Exploit.calls.append, ("executed",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    exp = write_cifar10(tmp_path)
    _dump(exp["dir"] / "test_batch", {b"data": _Exploit(), b"labels": [0]})
    with pytest.raises(PruningError, match="corrupt.*refusing to load global"):
        load_cifar(tmp_path, train=False)
    assert _Exploit.calls == []


@pytest.mark.parametrize(
    "blob, pattern",
    [
        ([1, 2, 3], "expected a pickled dict"),
        ({b"labels": [0]}, "lacks the key 'data'"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "lacks the key 'labels'"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, r"uint8 array of shape \(N, 3072\)"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "got float32 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"labels outside 0\.\.9"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "unreadable labels"),
    ],
)
def test_cifar_malformed_content(tmp_path, blob, pattern):
    exp = write_cifar10(tmp_path)
    _dump(exp["dir"] / "test_batch", blob)
    with pytest.raises(PruningError, match=pattern):
        load_cifar(tmp_path, train=False)


def test_cifar_bad_num_classes(tmp_path):
    with pytest.raises(PruningError, match="num_classes must be 10 .* or 100"):
        load_cifar(tmp_path, num_classes=20)


# --------------------------------------------------------------------------- #
# loaders and calibration batches
# --------------------------------------------------------------------------- #


def _indexed_dataset(per_class=(30, 30, 30, 30)) -> TensorDataset:
    """Inputs are the sample index, so batches reveal which samples they hold."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    return TensorDataset(torch.arange(len(labels), dtype=torch.float32).unsqueeze(1), labels)


def test_make_loader_is_seeded():
    ds = _indexed_dataset()
    loader = make_loader(ds, batch_size=16, shuffle=True, seed=5)
    assert loader.num_workers == 0 and loader.batch_size == 16
    first = torch.cat([x for x, _ in loader]).flatten()
    again = torch.cat([x for x, _ in make_loader(ds, batch_size=16, shuffle=True, seed=5)]).flatten()
    other = torch.cat([x for x, _ in make_loader(ds, batch_size=16, shuffle=True, seed=6)]).flatten()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(120))
    plain = torch.cat([x for x, _ in make_loader(ds, batch_size=50)]).flatten()
    assert plain.tolist() == list(range(120))
    with pytest.raises(PruningError, match="batch_size must be >= 1"):
        make_loader(ds, batch_size=0)
    with pytest.raises(PruningTypeError):
        make_loader(ds, batch_size=2.0)


def test_calibration_batches_class_balanced():
    ds = _indexed_dataset()
    batches = calibration_batches(ds, samples_per_class=5, num_batches=3, seed=1)
    assert len(batches) == 3
    seen = []
    for x, y in batches:
        assert x.shape == (20, 1) and y.shape == (20,) and y.dtype == torch.int64
        assert torch.bincount(y, minlength=4).tolist() == [5, 5, 5, 5]
        # targets really belong to the inputs they come with
        assert torch.equal(ds.tensors[1][x.flatten().long()], y)
        seen.extend(x.flatten().long().tolist())
    assert len(seen) == len(set(seen)) == 60  # no sample reused across batches
    again = calibration_batches(ds, samples_per_class=5, num_batches=3, seed=1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = calibration_batches(ds, samples_per_class=5, num_batches=3, seed=2)
    assert not torch.equal(other[0][0], batches[0][0])


def test_calibration_batches_grasp_style_on_digits(digits):
    train, _ = digits
    (x, y), = calibration_batches(train, samples_per_class=10)
    assert x.shape == (100, 1, 8, 8)
    assert torch.bincount(y).tolist() == [10] * 10


def test_calibration_batches_random_mode():
    ds = _indexed_dataset()
    with torch.random.fork_rng(devices=[]):  # leave the suite's global RNG alone
        torch.manual_seed(0)
        before = torch.rand(1)
        torch.manual_seed(0)
        batches = calibration_batches(ds, num_batches=4, batch_size=25, seed=3)
        assert torch.equal(torch.rand(1), before)  # global RNG untouched
    assert [tuple(x.shape) for x, _ in batches] == [(25, 1)] * 4
    ids = torch.cat([x for x, _ in batches]).flatten().long().tolist()
    assert len(set(ids)) == 100
    assert all(torch.equal(ds.tensors[1][x.flatten().long()], y) for x, y in batches)
    again = calibration_batches(ds, num_batches=4, batch_size=25, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


class _PlainDataset(Dataset):
    """A dataset that is neither a TensorDataset nor has .targets."""

    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x, int(y)


def test_calibration_batches_generic_and_subset_datasets():
    ds = _indexed_dataset()
    plain = calibration_batches(_PlainDataset(ds), samples_per_class=3, seed=0)
    fast = calibration_batches(ds, samples_per_class=3, seed=0)
    assert torch.equal(plain[0][0], fast[0][0]) and torch.equal(plain[0][1], fast[0][1])
    assert plain[0][1].dtype == torch.int64
    subset = Subset(ds, list(range(0, 120, 2)))
    (x, y), = calibration_batches(subset, samples_per_class=2)
    assert torch.bincount(y, minlength=4).tolist() == [2, 2, 2, 2]
    assert all(int(i) % 2 == 0 for i in x.flatten())


def test_calibration_batches_errors():
    ds = _indexed_dataset(per_class=(30, 30, 4, 30))
    with pytest.raises(PruningError, match="either num_batches and batch_size .* or samples_per_class"):
        calibration_batches(ds)
    with pytest.raises(PruningError, match="either num_batches"):
        calibration_batches(ds, num_batches=2)
    with pytest.raises(PruningError, match="need 200 distinct samples, but the dataset has only 94"):
        calibration_batches(ds, num_batches=2, batch_size=100)
    with pytest.raises(PruningError, match="class 2 has only 4 samples.*need 5"):
        calibration_batches(ds, samples_per_class=5)
    with pytest.raises(PruningError, match="batch_size=10 contradicts"):
        calibration_batches(ds, samples_per_class=2, batch_size=10)
    assert len(calibration_batches(ds, samples_per_class=2, batch_size=8)) == 1
    with pytest.raises(PruningError, match="samples_per_class must be >= 1"):
        calibration_batches(ds, samples_per_class=0)
    with pytest.raises(PruningTypeError, match="num_batches must be an int"):
        calibration_batches(ds, num_batches=1.0, batch_size=2)
    float_labels = TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(PruningError, match="integer class labels"):
        calibration_batches(float_labels, samples_per_class=1)

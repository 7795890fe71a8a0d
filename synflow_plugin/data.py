"""Offline data sets for pruning experiments, and the batches criteria score on.

Nothing in this module touches the network. Three kinds of source are supported:

* **MNIST-1D** (:func:`load_mnist1d`) is *generated* locally by the ``mnist1d``
  package from ten 1-D digit templates, so it needs no download at all. It is
  small (40 samples long), fast to train on a CPU, and still separates good
  architectures from bad ones, which makes it the default for demos and tests.
* **scikit-learn digits** (:func:`load_digits`): the 1,797 8x8 handwritten digit
  images bundled inside scikit-learn's wheel.
* **CIFAR-10 / CIFAR-100** (:func:`load_cifar`): read from a directory you
  downloaded and extracted yourself, in the standard "python pickle" layout.
  This module never downloads them; a missing directory raises a
  :class:`~synflow_plugin.errors.PruningError` that says where to get them.

Every loader returns :class:`torch.utils.data.TensorDataset` objects whose
first tensor is the float32 input (with a channel dimension, ready for
``Conv1d``/``Conv2d``) and whose second is the int64 class label.
:func:`load_dataset` dispatches on a name from :data:`DATASETS`.

Pruning-at-initialisation criteria that look at data (SNIP, GraSP) are scored
on a small, *fixed* list of batches, so the same seed gives the same mask:
:func:`calibration_batches` builds that list, either as plain random batches or
class-balanced ones (GraSP uses 10 samples per class). :func:`make_loader`
wraps a dataset in a seeded :class:`~torch.utils.data.DataLoader` for training.

The optional ``mnist1d`` and ``scikit-learn`` packages are imported only when
their loader is called (``pip install 'synflow-plugin[demo]'``).

>>> from synflow_plugin.data import load_digits, calibration_batches
>>> train, test = load_digits()
>>> batches = calibration_batches(train, samples_per_class=2)
>>> [tuple(t.shape) for t in batches[0]]
[(20, 1, 8, 8), (20,)]
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = [
    # registry
    "DatasetInfo",
    "DATASETS",
    "load_dataset",
    # loaders
    "load_mnist1d",
    "load_digits",
    "load_cifar",
    # normalisation constants
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    # batching
    "make_loader",
    "calibration_batches",
]

PathLike = Union[str, "os.PathLike[str]"]
Batch = Tuple[torch.Tensor, torch.Tensor]

# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set before seeing any of it.

    Attributes:
        name: The key in :data:`DATASETS` and the name :func:`load_dataset` takes.
        input_shape: Shape of one input *without* the batch dimension,
            channel first, e.g. ``(1, 40)`` for MNIST-1D or ``(3, 32, 32)`` for CIFAR.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        needs_root: ``True`` when the data must already be on disk under a
            ``root`` directory (CIFAR); ``False`` when it is generated or bundled.
        source: One line on where the data comes from.

    >>> DATASETS["cifar10"].input_shape
    (3, 32, 32)
    """

    name: str
    input_shape: Tuple[int, ...]
    num_classes: int
    needs_root: bool
    source: str


DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        "mnist1d": DatasetInfo(
            "mnist1d", (1, 40), 10, False, "generated locally by the mnist1d package"
        ),
        "digits": DatasetInfo(
            "digits", (1, 8, 8), 10, False, "bundled with scikit-learn (sklearn.datasets.load_digits)"
        ),
        "cifar10": DatasetInfo(
            "cifar10", (3, 32, 32), 10, True, "cifar-10-python.tar.gz, downloaded by you"
        ),
        "cifar100": DatasetInfo(
            "cifar100", (3, 32, 32), 100, True, "cifar-100-python.tar.gz, downloaded by you"
        ),
    }
)
"""Read-only map from data-set name to its :class:`DatasetInfo`.

>>> sorted(DATASETS)
['cifar10', 'cifar100', 'digits', 'mnist1d']
>>> DATASETS["mnist1d"].num_classes
10
"""


def load_dataset(
    name: str, *, root: Optional[PathLike] = None, **kwargs: Any
) -> Tuple[TensorDataset, TensorDataset]:
    """Load the train and test split of a data set by name.

    Args:
        name: A key of :data:`DATASETS`. Case, ``-`` and ``_`` are ignored, so
            ``"CIFAR-10"`` works too.
        root: Where the data lives on disk. Required for ``cifar10`` and
            ``cifar100`` (see :func:`load_cifar`); for ``mnist1d`` it is used as
            the ``cache_dir`` of :func:`load_mnist1d` unless ``cache_dir`` is
            passed; ``digits`` ships with scikit-learn and ignores it.
        **kwargs: Passed on to the loader: ``seed``/``num_samples``/``cache_dir``
            for ``mnist1d``, ``test_fraction``/``seed`` for ``digits``,
            ``normalize`` for CIFAR.

    Returns:
        ``(train, test)`` :class:`~torch.utils.data.TensorDataset` objects.

    Raises:
        PruningError: ``name`` is unknown (the message lists the valid names),
            a CIFAR data set was asked for without ``root``, or the loader
            itself refused (see the individual loaders).
        TypeError: a keyword argument the chosen loader does not take.

    >>> train, test = load_dataset("digits", seed=1)
    >>> len(train) + len(test)
    1797
    """
    if not isinstance(name, str):
        raise PruningTypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise PruningError(
            f"unknown dataset {name!r}; valid names are: {', '.join(sorted(DATASETS))}"
        )
    if key == "mnist1d":
        if root is not None:
            kwargs.setdefault("cache_dir", root)
        return load_mnist1d(**kwargs)
    if key == "digits":
        return load_digits(**kwargs)
    num_classes = DATASETS[key].num_classes
    if root is None:
        raise PruningError(
            f"dataset {key!r} is read from disk: pass root=<directory holding "
            f"{_CIFAR_SPECS[num_classes].dirname}/> ({_CIFAR_SPECS[num_classes].url})"
        )
    train = load_cifar(root, num_classes=num_classes, train=True, **kwargs)
    test = load_cifar(root, num_classes=num_classes, train=False, **kwargs)
    return train, test


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_int(value: Any, what: str, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PruningTypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise PruningError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- #
# MNIST-1D
# --------------------------------------------------------------------------- #

_MNIST1D_DEFAULT_SAMPLES = 5000  # mnist1d's own default: 4000 train + 1000 test
_MNIST1D_CACHE_FORMAT = 1


def load_mnist1d(
    *,
    seed: int = 42,
    num_samples: Optional[int] = None,
    cache_dir: Optional[PathLike] = None,
) -> Tuple[TensorDataset, TensorDataset]:
    """Generate MNIST-1D locally (no download) and return its train/test split.

    Uses ``mnist1d.data.make_dataset`` with the package's default arguments
    (template length 12, padding 36-60, 40 output samples, an 80/20 split), only
    overriding ``seed`` and ``num_samples``. The package's ``get_dataset``
    helper is deliberately *not* used: by default it downloads a pickle from
    GitHub and writes files into the working directory.

    ``make_dataset`` seeds Python's and NumPy's *global* random generators; this
    function saves and restores both, so calling it does not disturb the
    caller's random streams.

    Args:
        seed: Seed of the generator. The same seed (and ``num_samples``) gives
            bit-identical tensors. 42 is the package's default.
        num_samples: Total number of samples to generate, train and test
            together; a multiple of 10 (the generator makes
            ``num_samples // 10`` per class) and at least 10. ``None`` means
            5000, i.e. 4000 train and 1000 test. Use e.g. 200 in tests.
        cache_dir: If given, the generated tensors are saved there as
            ``mnist1d_seed{seed}_n{num_samples}.pt`` and read back on the next
            call instead of being regenerated (about 1.5 s for 5000 samples).
            A damaged cache file is silently regenerated. Without it nothing
            is written to disk.

    Returns:
        ``(train, test)`` TensorDatasets. Inputs are float32 of shape
        ``(N, 1, 40)`` (a channel dimension for ``Conv1d``; the generator
        standardises the whole set to mean 0, std 1), labels int64 in ``0..9``.
        The split is the generator's: the first 80% of a shuffled set, so the
        classes are only roughly balanced within each split.

    Raises:
        PruningError: ``num_samples`` is not a positive multiple of 10.
        PruningTypeError: ``seed`` or ``num_samples`` is not an int.
        ImportError: the optional ``mnist1d`` package is not installed.

    >>> train, test = load_mnist1d(num_samples=100)
    >>> len(train), len(test)
    (80, 20)
    >>> x, y = train[0]
    >>> tuple(x.shape), x.dtype, y.dtype
    ((1, 40), torch.float32, torch.int64)
    """
    seed = _check_int(seed, "seed", minimum=0)
    if num_samples is None:
        num_samples = _MNIST1D_DEFAULT_SAMPLES
    num_samples = _check_int(num_samples, "num_samples", minimum=10)
    if num_samples % 10:
        raise PruningError(
            f"num_samples must be a multiple of 10 (MNIST-1D makes num_samples // 10 "
            f"examples of each of its 10 classes), got {num_samples}"
        )

    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir).expanduser() / f"mnist1d_seed{seed}_n{num_samples}.pt"
        cached = _read_mnist1d_cache(cache_path, seed, num_samples)
        if cached is not None:
            return _mnist1d_datasets(cached)

    arrays = _generate_mnist1d(seed, num_samples)
    if cache_path is not None:
        _write_mnist1d_cache(cache_path, arrays, seed, num_samples)
    return _mnist1d_datasets(arrays)


def _generate_mnist1d(seed: int, num_samples: int) -> Dict[str, torch.Tensor]:
    """Run the mnist1d generator without leaking its global seeding."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_mnist1d needs the optional 'mnist1d' package: "
            "pip install 'synflow-plugin[demo]' (or pip install mnist1d)"
        ) from exc

    args = get_dataset_args()  # a fresh object on every call: safe to modify
    args.seed = seed
    args.num_samples = num_samples
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": torch.from_numpy(np.asarray(raw["x"], dtype=np.float32)),
        "y": torch.from_numpy(np.asarray(raw["y"], dtype=np.int64)),
        "x_test": torch.from_numpy(np.asarray(raw["x_test"], dtype=np.float32)),
        "y_test": torch.from_numpy(np.asarray(raw["y_test"], dtype=np.int64)),
    }


def _mnist1d_datasets(arrays: Dict[str, torch.Tensor]) -> Tuple[TensorDataset, TensorDataset]:
    train = TensorDataset(arrays["x"].unsqueeze(1), arrays["y"])
    test = TensorDataset(arrays["x_test"].unsqueeze(1), arrays["y_test"])
    return train, test


def _read_mnist1d_cache(
    path: Path, seed: int, num_samples: int
) -> Optional[Dict[str, torch.Tensor]]:
    """Return the cached tensors, or ``None`` if absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a cache is disposable: any damage means "regenerate"
        return None
    if not isinstance(blob, dict) or blob.get("meta") != {
        "format": _MNIST1D_CACHE_FORMAT,
        "seed": seed,
        "num_samples": num_samples,
    }:
        return None
    arrays = {k: blob.get(k) for k in ("x", "y", "x_test", "y_test")}
    if not all(isinstance(t, torch.Tensor) for t in arrays.values()):
        return None
    if len(arrays["x"]) + len(arrays["x_test"]) != num_samples:
        return None
    return arrays  # type: ignore[return-value]


def _write_mnist1d_cache(
    path: Path, arrays: Dict[str, torch.Tensor], seed: int, num_samples: int
) -> None:
    """Save atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = dict(arrays, meta={"format": _MNIST1D_CACHE_FORMAT, "seed": seed, "num_samples": num_samples})
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(blob, handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- #
# scikit-learn digits
# --------------------------------------------------------------------------- #


def load_digits(
    *, test_fraction: float = 0.2, seed: int = 0
) -> Tuple[TensorDataset, TensorDataset]:
    """The 8x8 handwritten digits bundled with scikit-learn, split train/test.

    The 1,797 images (about 180 per class) ship inside scikit-learn, so this
    never downloads. The split is *stratified*: each class contributes
    ``round(test_fraction * class_size)`` images to the test set (at least one,
    and at least one is left for training), chosen by a generator seeded with
    ``seed``; both splits are then shuffled with the same generator.

    Args:
        test_fraction: Share of each class held out for testing, strictly
            between 0 and 1. The default 0.2 gives 1438 train / 359 test.
        seed: Seed of the split. The same seed gives identical tensors.

    Returns:
        ``(train, test)`` TensorDatasets. Inputs are float32 of shape
        ``(N, 1, 8, 8)``, the raw 0-16 pixel counts divided by 16 so they lie
        in ``[0, 1]``; labels are int64 in ``0..9``.

    Raises:
        PruningError: ``test_fraction`` is not strictly between 0 and 1.
        PruningTypeError: ``test_fraction`` is not a number or ``seed`` not an int.
        ImportError: scikit-learn is not installed.

    >>> train, test = load_digits()
    >>> len(train), len(test)
    (1438, 359)
    >>> float(train.tensors[0].max()) <= 1.0
    True
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise PruningTypeError(
            f"test_fraction must be a float, got {type(test_fraction).__name__}"
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise PruningError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    seed = _check_int(seed, "seed", minimum=0)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits needs scikit-learn: pip install 'synflow-plugin[demo]' "
            "(or pip install scikit-learn)"
        ) from exc

    bunch = _sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)).reshape(-1, 1, 8, 8)
    images = images / 16.0
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))

    generator = torch.Generator().manual_seed(seed)
    train_parts: List[torch.Tensor] = []
    test_parts: List[torch.Tensor] = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = min(max(int(round(float(test_fraction) * len(members))), 1), len(members) - 1)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train_idx = torch.cat(train_parts)
    test_idx = torch.cat(test_parts)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=generator)]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=generator)]
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )


# --------------------------------------------------------------------------- #
# CIFAR-10 / CIFAR-100 from local pickles
# --------------------------------------------------------------------------- #

CIFAR10_MEAN: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Per-channel (R, G, B) mean of the CIFAR-10 training images, pixels in [0, 1]."""
CIFAR10_STD: Tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the CIFAR-10 training images, pixels in [0, 1]."""
CIFAR100_MEAN: Tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
"""Per-channel (R, G, B) mean of the CIFAR-100 training images, pixels in [0, 1]."""
CIFAR100_STD: Tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
"""Per-channel standard deviation of the CIFAR-100 training images, pixels in [0, 1]."""


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    dirname: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    label_key: str
    url: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


_CIFAR_SPECS: Dict[int, _CifarSpec] = {
    10: _CifarSpec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    100: _CifarSpec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}

_CIFAR_ROW = 3 * 32 * 32


def load_cifar(
    root: PathLike,
    *,
    num_classes: int = 10,
    train: bool = True,
    normalize: bool = True,
) -> TensorDataset:
    """Read CIFAR-10 or CIFAR-100 from a local, already extracted download.

    The expected layout is the official "python version" archive, extracted:

    * CIFAR-10: ``cifar-10-batches-py/`` holding ``data_batch_1`` ..
      ``data_batch_5`` (train, 10,000 images each) and ``test_batch``;
      labels under the key ``b"labels"``.
    * CIFAR-100: ``cifar-100-python/`` holding ``train`` and ``test``; the
      100 fine labels under ``b"fine_labels"`` (coarse labels are ignored).

    Each file is a pickled dict whose ``b"data"`` is a uint8 array of shape
    ``(N, 3072)``: per image, 1024 red then 1024 green then 1024 blue values,
    each plane in row-major order. ``torchvision.datasets.CIFAR10(root,
    download=True)`` produces exactly this layout too.

    The pickles are read with a restricted unpickler that only accepts the
    NumPy array machinery such files contain, so a tampered file cannot run
    code; it is reported as corrupt instead. Only the files of the requested
    split must be present.

    Args:
        root: Either the directory *containing* ``cifar-10-batches-py`` /
            ``cifar-100-python`` (what ``tar -xzf`` into ``root`` gives), or
            that batches directory itself.
        num_classes: ``10`` for CIFAR-10, ``100`` for CIFAR-100.
        train: ``True`` for the 50,000 training images, ``False`` for the
            10,000 test images.
        normalize: If ``True``, subtract the per-channel mean and divide by the
            per-channel std (:data:`CIFAR10_MEAN`/:data:`CIFAR10_STD` or the
            CIFAR-100 pair), the usual preprocessing. If ``False``, pixels are
            only scaled to ``[0, 1]`` (``uint8 / 255``).

    Returns:
        A TensorDataset of float32 inputs ``(N, 3, 32, 32)`` and int64 labels
        in ``0..num_classes - 1``, in file order. The full training set takes
        about 600 MB as float32.

    Raises:
        PruningError: the directory or one of its files is missing (the message
            names the path, the expected files and the download URL), a file is
            corrupt or not a CIFAR pickle, or ``num_classes`` is not 10 or 100.

    >>> train = load_cifar("~/data", num_classes=10)  # doctest: +SKIP
    >>> tuple(train.tensors[0].shape), train.tensors[1].dtype  # doctest: +SKIP
    ((50000, 3, 32, 32), torch.int64)
    """
    if isinstance(num_classes, bool) or num_classes not in _CIFAR_SPECS:
        raise PruningError(
            f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes!r}"
        )
    spec = _CIFAR_SPECS[num_classes]
    files = spec.train_files if train else spec.test_files
    directory = _find_cifar_dir(root, spec, files)

    images: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for filename in files:
        data, targets = _read_cifar_file(directory / filename, spec, num_classes)
        images.append(data)
        labels.append(targets)
    data = np.concatenate(images) if len(images) > 1 else images[0]
    inputs = torch.from_numpy(data).reshape(-1, 3, 32, 32).to(torch.float32)
    inputs.div_(255.0)
    if normalize:
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        inputs.sub_(mean).div_(std)
    targets = torch.from_numpy(np.concatenate(labels))
    return TensorDataset(inputs, targets)


def _cifar_help(spec: _CifarSpec, root: Path) -> str:
    return (
        f"{spec.name} is never downloaded by synflow_plugin: download {spec.url} "
        f"and extract it with `tar -xzf {spec.url.rsplit('/', 1)[-1]} -C {root}` "
        f"(torchvision.datasets.{spec.name.replace('-', '')}(root, download=True) "
        f"creates the same layout)"
    )


def _find_cifar_dir(root: PathLike, spec: _CifarSpec, files: Sequence[str]) -> Path:
    """Pick ``root/<dirname>`` or ``root`` itself, or explain what is missing."""
    if not isinstance(root, (str, os.PathLike)):
        raise PruningTypeError(f"root must be a path, got {type(root).__name__}")
    root_path = Path(root).expanduser()
    all_files = ", ".join(spec.train_files + spec.test_files)
    nested = root_path / spec.dirname
    if nested.is_dir():
        directory = nested
    elif root_path.is_dir() and (
        root_path.name == spec.dirname
        or any((root_path / f).exists() for f in spec.train_files + spec.test_files)
    ):
        directory = root_path
    else:
        where = "does not exist" if not root_path.exists() else "holds no CIFAR files"
        raise PruningError(
            f"{spec.name} not found: {root_path} {where}; expected {nested} (or "
            f"{root_path} itself) containing {all_files}. "
            + _cifar_help(spec, root_path)
        )
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise PruningError(
            f"{spec.name} directory {directory} is missing {', '.join(missing)} "
            f"(a complete download holds {all_files}). "
            + _cifar_help(spec, directory.parent)
        )
    return directory


def _numpy_pickle_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """The only globals a CIFAR pickle needs: NumPy's array reconstruction."""
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    import codecs

    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes
    }
    # Files written by NumPy 1.x (the official archives) name numpy.core,
    # NumPy 2.x writes numpy._core: accept both, resolve to the live module.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside a tiny NumPy allow-list."""

    _allowed: Optional[Dict[Tuple[str, str], Callable[..., Any]]] = None

    def find_class(self, module: str, name: str) -> Any:
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = _numpy_pickle_globals()
        try:
            return _CifarUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR pickle"
            ) from None


def _get_key(blob: Mapping[Any, Any], key: str) -> Any:
    """Fetch ``key`` whether the file stored it as bytes (official) or str."""
    if key.encode() in blob:
        return blob[key.encode()]
    return blob.get(key)


def _read_cifar_file(path: Path, spec: _CifarSpec, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Load one batch file and check it is what CIFAR files look like."""
    hint = f"re-extract {spec.url.rsplit('/', 1)[-1]} ({spec.url})"
    try:
        with open(path, "rb") as handle:
            blob = _CifarUnpickler(handle, encoding="bytes").load()
    except OSError as exc:
        raise PruningError(f"cannot read {spec.name} file {path}: {exc}") from exc
    except Exception as exc:  # any unpickling failure means a damaged file
        raise PruningError(
            f"{spec.name} file {path} is corrupt or not a CIFAR pickle "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    if not isinstance(blob, dict):
        raise PruningError(
            f"{spec.name} file {path} is corrupt: expected a pickled dict, "
            f"got {type(blob).__name__}; {hint}"
        )
    data = _get_key(blob, "data")
    raw_labels = _get_key(blob, spec.label_key)
    if data is None or raw_labels is None:
        raise PruningError(
            f"{spec.name} file {path} is corrupt: it lacks the key "
            f"{'data' if data is None else spec.label_key!r} "
            f"(keys: {sorted(map(repr, blob))}); {hint}"
        )
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_ROW
    ):
        got = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise PruningError(
            f"{spec.name} file {path} is corrupt: 'data' must be a uint8 array of "
            f"shape (N, {_CIFAR_ROW}), got {got}; {hint}"
        )
    try:
        labels = np.asarray(raw_labels)
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"expected a 1-D list of ints, got dtype {labels.dtype}, shape {labels.shape}")
        labels = labels.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise PruningError(f"{spec.name} file {path} has unreadable labels ({exc}); {hint}") from exc
    if len(labels) != len(data):
        raise PruningError(
            f"{spec.name} file {path} is corrupt: {len(data)} images but "
            f"{len(labels)} labels; {hint}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PruningError(
            f"{spec.name} file {path} has labels outside 0..{num_classes - 1} "
            f"(min {labels.min()}, max {labels.max()}); is it the right data set?"
        )
    return np.ascontiguousarray(data), labels


# --------------------------------------------------------------------------- #
# Batching
# --------------------------------------------------------------------------- #


def make_loader(
    dataset: Dataset, *, batch_size: int = 128, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Wrap a dataset in a reproducible, single-process :class:`DataLoader`.

    The loader owns a :class:`torch.Generator` seeded with ``seed``, so with
    ``shuffle=True`` the order is the same every time the program runs (and
    independent of the global torch seed); each new pass over the loader still
    draws a fresh order from that generator. ``num_workers=0`` keeps loading
    in the main process, which is fastest for in-memory TensorDatasets.

    Args:
        dataset: Any map-style dataset, e.g. one returned by a loader here.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Reshuffle at the start of every epoch.
        seed: Seed of the loader's own generator.

    Returns:
        A :class:`~torch.utils.data.DataLoader`.

    Raises:
        PruningError: ``batch_size`` < 1 or ``seed`` < 0.
        PruningTypeError: ``batch_size`` or ``seed`` is not an int.

    >>> train, _ = load_digits()
    >>> x, y = next(iter(make_loader(train, batch_size=32, shuffle=True)))
    >>> tuple(x.shape), tuple(y.shape)
    ((32, 1, 8, 8), (32,))
    """
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


def _dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset`` as a 1-D int64 tensor, without loading inputs if possible."""
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise PruningError("the TensorDataset needs (inputs, labels) tensors, it has only one")
        labels = dataset.tensors[1]
    elif isinstance(dataset, Subset):
        labels = _dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    elif hasattr(dataset, "targets"):  # torchvision-style datasets
        labels = torch.as_tensor(dataset.targets)  # type: ignore[attr-defined]
    else:
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise PruningError(
            "samples_per_class needs integer class labels, one per sample; got labels "
            f"of dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    return labels.to(torch.int64)


def _gather(dataset: Dataset, indices: torch.Tensor) -> Batch:
    """Stack the samples at ``indices`` into one ``(inputs, targets)`` batch."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[0][indices], dataset.tensors[1][indices]
    items = [dataset[i] for i in indices.tolist()]
    inputs = torch.stack([torch.as_tensor(item[0]) for item in items])
    targets = torch.stack([torch.as_tensor(item[1]) for item in items])
    return inputs, targets


def calibration_batches(
    dataset: Dataset,
    *,
    num_batches: Optional[int] = None,
    batch_size: Optional[int] = None,
    samples_per_class: Optional[int] = None,
    seed: int = 0,
) -> List[Batch]:
    """The small, fixed list of batches a data-driven criterion is scored on.

    SNIP (Lee et al., 2019) scores connections on a single mini-batch; GraSP
    (Wang et al., 2020) on a class-balanced batch of 10 samples per class.
    Fixing the batches (instead of drawing from a shuffling loader) makes the
    mask a pure function of the model, the data and ``seed``.

    Two ways to ask:

    * ``num_batches`` and ``batch_size``: ``num_batches`` batches of
      ``batch_size`` samples drawn at random *without replacement* from the
      whole dataset.
    * ``samples_per_class``: every batch holds exactly ``samples_per_class``
      samples of every class present in the labels (so ``batch_size`` is
      ``samples_per_class * num_classes``; pass ``batch_size`` only if it
      equals that), in shuffled order; ``num_batches`` defaults to 1. No
      sample appears twice across the batches.

    Sampling uses a private generator seeded with ``seed``; the global random
    state is neither used nor changed. The returned tensors are copies.

    Args:
        dataset: A map-style dataset of ``(input, label)`` pairs. For a
            :class:`~torch.utils.data.TensorDataset` (or a ``Subset`` of one)
            labels and batches are sliced directly; other datasets are indexed
            sample by sample (and for ``samples_per_class`` their labels are read
            from ``.targets`` if present, else by visiting every sample).
        num_batches: How many batches to return.
        batch_size: Samples per batch (random mode).
        samples_per_class: Samples of each class per batch (balanced mode).
        seed: Seed of the sampling.

    Returns:
        A list of ``num_batches`` ``(inputs, targets)`` tuples.

    Raises:
        PruningError: neither or a mix of the two modes was asked for, a count
            is < 1, the dataset has fewer samples than requested (in balanced
            mode: a class has fewer than ``samples_per_class * num_batches``;
            the message names it), or its labels are not integer classes.
        PruningTypeError: a count or ``seed`` is not an int.

    >>> train, _ = load_digits()
    >>> batches = calibration_batches(train, samples_per_class=10)
    >>> x, y = batches[0]
    >>> tuple(x.shape), torch.bincount(y).tolist()
    ((100, 1, 8, 8), [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    >>> len(calibration_batches(train, num_batches=3, batch_size=64))
    3
    """
    seed = _check_int(seed, "seed", minimum=0)
    generator = torch.Generator().manual_seed(seed)
    total = len(dataset)  # type: ignore[arg-type]

    if samples_per_class is None:
        if num_batches is None or batch_size is None:
            raise PruningError(
                "calibration_batches needs either num_batches and batch_size "
                "(random batches) or samples_per_class (class-balanced batches)"
            )
        num_batches = _check_int(num_batches, "num_batches", minimum=1)
        batch_size = _check_int(batch_size, "batch_size", minimum=1)
        needed = num_batches * batch_size
        if needed > total:
            raise PruningError(
                f"{num_batches} batches of {batch_size} need {needed} distinct samples, "
                f"but the dataset has only {total}"
            )
        order = torch.randperm(total, generator=generator)[:needed]
        return [_gather(dataset, chunk) for chunk in order.split(batch_size)]

    samples_per_class = _check_int(samples_per_class, "samples_per_class", minimum=1)
    num_batches = 1 if num_batches is None else _check_int(num_batches, "num_batches", minimum=1)
    labels = _dataset_labels(dataset)
    classes = torch.unique(labels)
    if len(classes) == 0:
        raise PruningError("the dataset is empty: no class to sample from")
    per_batch = samples_per_class * len(classes)
    if batch_size is not None and batch_size != per_batch:
        raise PruningError(
            f"with samples_per_class={samples_per_class} and {len(classes)} classes each "
            f"batch holds {per_batch} samples; batch_size={batch_size} contradicts that "
            "(leave batch_size out)"
        )
    needed = samples_per_class * num_batches
    chosen: List[torch.Tensor] = []  # per class: (num_batches, samples_per_class)
    for cls in classes.tolist():
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < needed:
            raise PruningError(
                f"class {cls} has only {len(members)} samples, but {num_batches} batch(es) "
                f"of {samples_per_class} per class need {needed}"
            )
        picked = members[torch.randperm(len(members), generator=generator)[:needed]]
        chosen.append(picked.view(num_batches, samples_per_class))
    per_batch_idx = torch.cat(chosen, dim=1)  # (num_batches, per_batch)
    batches: List[Batch] = []
    for row in per_batch_idx:
        row = row[torch.randperm(len(row), generator=generator)]
        batches.append(_gather(dataset, row))
    return batches

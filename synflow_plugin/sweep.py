r"""Experiment sweeps: criteria x compressions x seeds, each a prune at init, a training and a test.

The experiments of the SynFlow paper (Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020,
https://arxiv.org/abs/2006.05467) that compare accuracies are grids: every criterion prunes a freshly
initialised network to every compression, for several seeds, and the pruned network is
trained and tested. Compression is the ratio of all prunable weights to the weights kept,
so a trial at compression ``c`` prunes the fraction ``amount = 1 - 1/c`` (``100`` ->
``0.99``); SynFlow ranks weights by ``|θ ⊙ ∂R/∂θ|`` with ``R = 1ᵀ(∏ₗ|θˡ|)1`` over its
rounds, the other criteria by their own scores (``synflow-plugin list``).

A :class:`Grid` says what to run; :func:`run_sweep` runs its :class:`Trial`\ s in this
process (``engine="local"``, the default) or as Ray tasks (``engine="ray"``: a local Ray
instance, or the cluster named by ``RAY_ADDRESS``), and writes ``<out>/results.json``
(one record per trial, rewritten atomically after every finished trial) and
``<out>/accuracy.png`` (test accuracy vs compression, mean ± std over the seeds).

Criteria that train find their ticket with the grid's own training: one that
``needs_training`` (IMP) gets a ``train_fn`` that runs exactly the trial's final training
(same epochs, optimizer, learning rate, batch size and seed), so its level trainings and
the training of the ticket are the same; one that ``reads_training_set`` (GemMiner) gets
the training set as a shuffling loader seeded with the trial's seed. Per-criterion options
(``Grid(criterion_options={"imp": {"rate": 0.5}})``) go to the criterion's constructor;
the time to find a ticket (``times["prune"]``) includes those trainings.

Every trial sets the torch, NumPy and Python seeds and torch's thread count itself, so
its record is the same whichever engine or process runs it (times aside). A rerun into
the same folder resumes: finished trials are kept, failed and missing ones run. A trial
that fails is recorded with its error and the sweep goes on.

>>> grid = Grid(model="mlp", dataset="digits", criteria=["synflow", "snip"],
...             compressions=[10, "10^2"], seeds=[0, 1], epochs=2)
>>> len(grid.trials()), grid.trials()[0].key
(8, 'synflow|10.0|0')
>>> round(grid.trials()[2].amount, 2)
0.99
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from synflow_plugin._files import write_json_atomic
from synflow_plugin.cli import _key_value, _nonnegative_float, _positive_float, _positive_int, parse_compression
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = [
    # what to run
    "Grid",
    "Trial",
    "DENSE",
    # running
    "run_sweep",
    "run_trial",
    "SweepResult",
    "ENGINES",
    # results
    "load_results",
    "summarise",
    "plot_sweep",
    "RESULTS_FILE",
    "FIGURE_FILE",
    # command line
    "add_parser",
    "main",
]

ENGINES = ("local", "ray")
RESULTS_FILE = "results.json"
FIGURE_FILE = "accuracy.png"
#: The criterion name of the unpruned baseline trials (``Grid(dense=True)``).
DENSE = "dense"
_FORMAT = "synflow-plugin sweep"
_FORMAT_VERSION = 1
_LOCK_FILE = ".sweep.lock"
_MAX_WARNINGS = 20
# Settings that do not change a trial's result, so a resume does not compare them.
_NOT_IDENTITY = ("data_root",)
# Settings added after the first files were written, with the value those files meant.
_ADDED_SETTINGS: dict[str, Any] = {"criterion_options": {}}


# --------------------------------------------------------------------------- checks
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_tuple(value: Any, name: str) -> tuple:
    """A list, tuple or comma-separated string as a tuple; anything else is refused."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise PruningTypeError(f"Grid(): {name}={value!r} should be a list (or a comma-separated string), "
                           f"got {type(value).__name__}")


def _unique(values: tuple, name: str) -> tuple:
    seen = set()
    repeated = [v for v in values if v in seen or seen.add(v)]
    if repeated:
        raise PruningError(f"Grid(): {name}={list(values)!r} lists {repeated[0]!r} twice; give each value once")
    if not values:
        raise PruningError(f"Grid(): {name} is empty; give at least one value")
    return values


def _positive(value: Any, name: str, kind: str = "int") -> None:
    ok_type = _is_int(value) if kind == "int" else _is_number(value)
    if not ok_type:
        raise PruningTypeError(f"Grid(): {name}={value!r} should be a positive {kind}")
    if not (math.isfinite(float(value)) and value > 0):
        raise PruningError(f"Grid(): {name}={value!r} should be a positive {kind}")


def _compression(value: Any) -> float:
    """A compression ratio >= 1: a number, or a string such as ``"100x"``, ``"1e2"``, ``"10^2"``."""
    if isinstance(value, str):
        try:
            return parse_compression(value)
        except argparse.ArgumentTypeError as exc:
            raise PruningError(f"Grid(): compressions: {exc}") from None
    if not _is_number(value):
        raise PruningTypeError(f"Grid(): compressions: {value!r} ({type(value).__name__}) should be a number >= 1 "
                               "(all weights / kept weights) or a string such as '100x' or '10^2'")
    value = float(value)
    if not (math.isfinite(value) and value >= 1.0):
        raise PruningError(f"Grid(): compressions: {value!r} should be a finite ratio >= 1 of all weights to kept "
                           "weights, e.g. 10 (prunes 90%) or 100 (prunes 99%)")
    return value


#: Criterion keywords the sweep supplies itself, from the trial.
_SUPPLIED = ("seed", "train_fn", "data", "example_inputs", "rewind_into")


def _criterion_options(value: Any, known: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``Grid.criterion_options`` checked: criterion names to dicts of JSON keywords; an
    option no trial could use (``iterations`` of a one-shot criterion) is refused."""
    from synflow_plugin.criteria import get_criterion
    from synflow_plugin.demo import criterion_class

    if not isinstance(value, Mapping):
        raise PruningTypeError(f"Grid(): criterion_options={value!r} should be a dict of criterion name -> dict "
                               "of its keywords, e.g. {'imp': {'rate': 0.5}}")
    out: dict[str, dict[str, Any]] = {}
    for name, options in value.items():
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in known:
            raise PruningError(f"Grid(): criterion_options: unknown criterion {name!r}; expected some of: "
                               f"{', '.join(known)}")
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise PruningTypeError(f"Grid(): criterion_options[{name!r}]={options!r} should be a dict of keywords, "
                                   "e.g. {'rate': 0.5}")
        supplied = [k for k in options if k in _SUPPLIED]
        if supplied:
            raise PruningError(f"Grid(): criterion_options[{name!r}]: {supplied[0]!r} is set by the sweep from each "
                               f"trial (its seed, training and data); leave out {', '.join(_SUPPLIED)}")
        if "iterations" in options:
            _positive(options["iterations"], f"criterion_options[{name!r}]['iterations']")
            caps = criterion_class(key)
            if caps.default_iterations <= 1 and not caps.needs_training:
                raise PruningError(f"Grid(): criterion_options[{name!r}]['iterations']: {key} prunes in one round, "
                                   "so iterations would be ignored; leave it out")
        try:
            json.dumps(dict(options), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PruningTypeError(f"Grid(): criterion_options[{name!r}]={options!r} must hold JSON values: "
                                   f"{exc}") from None
        try:  # built once here, so that a bad option fails before any trial loads data
            get_criterion(key, **{k: v for k, v in options.items() if k != "iterations"})
        except (PruningError, PruningTypeError) as exc:
            raise type(exc)(f"Grid(): criterion_options[{name!r}]: {exc}") from None
        out[key] = dict(options)
    return out


# --------------------------------------------------------------------------- grid and trials
@dataclass(frozen=True)
class Trial:
    """One point of a :class:`Grid`: prune ``model`` at init with ``criterion`` to
    ``compression``, train it ``epochs`` epochs on ``dataset``, test it; everything seeded
    with ``seed``. Build trials with :meth:`Grid.trials`.

    ``criterion`` is :data:`DENSE` for an unpruned baseline (compression 1).
    """

    criterion: str
    compression: float
    seed: int
    model: str
    dataset: str
    epochs: int
    model_options: Mapping[str, Any]
    lr: float
    batch_size: int
    optimizer: str
    weight_decay: float
    iterations: int | None
    calibration_per_class: int
    threads: int
    data_root: str | None = None
    #: Keywords of this trial's criterion (from :attr:`Grid.criterion_options`); the key
    #: ``iterations`` sets its rounds instead of :attr:`iterations`.
    criterion_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The trial's name within its sweep, ``criterion|compression|seed`` (the
        compression's ``repr``, which JSON keeps exactly)."""
        return f"{self.criterion}|{self.compression!r}|{self.seed}"

    @property
    def amount(self) -> float:
        """The fraction of the weights pruned, ``1 - 1/compression``."""
        return 1.0 - 1.0 / self.compression

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_options"] = dict(self.model_options)
        out["criterion_options"] = dict(self.criterion_options)
        return out


@dataclass
class Grid:
    """What a sweep runs: every criterion x compression x seed on one model and data set.

    Args:
        model: a zoo name (``synflow-plugin list``), e.g. ``"mlp"``, ``"conv"``, ``"vgg16_bn"``.
        dataset: ``"digits"``, ``"mnist1d"``, ``"cifar10"`` or ``"cifar100"`` (CIFAR needs
            ``data_root``); it sets the model's input shape and classes.
        criteria: registry names (plugins' included), e.g. ``["synflow", "snip"]``.
        compressions: ratios >= 1 of all weights to kept weights: numbers or strings such
            as ``"100x"``, ``"1e3"``, ``"10^2.5"``.
        seeds: non-negative ints; a trial's seed sets the initialisation, the example input,
            the calibration batch of data-driven criteria, a seeded criterion's scores and
            the data order.
        epochs: training epochs per trial (Adam by default, cosine schedule: :func:`~synflow_plugin.train.train_model`).
        model_options: keywords of the model factory, e.g. ``{"depth": 3, "width": 32}``.
        dense: also run one unpruned trial per seed (criterion :data:`DENSE`, compression 1).
        lr, batch_size, optimizer, weight_decay: the training settings.
        iterations: rounds of the iterative criteria (default: each one's own, SynFlow 100);
            one-shot criteria stay one-shot.
        calibration_per_class: samples per class of the batch data-driven criteria score on.
        data_root: the folder holding the CIFAR files.
        criterion_options: per criterion name, the keywords of its constructor, e.g.
            ``{"imp": {"rate": 0.5}, "gemminer": {"epochs": 5, "iterations": 10}}``; the key
            ``iterations`` sets that criterion's rounds (over ``iterations``). What the sweep
            supplies itself (``seed``, ``train_fn``, ``data``, ``example_inputs``) cannot be given.
        threads: torch threads inside every trial; part of the trial, since the order of
            torch's floating-point reductions, hence the last bits of a result, depends on it.

    Raises:
        PruningError / PruningTypeError: a value that cannot be run; the message names it.
    """

    model: str
    dataset: str
    criteria: Sequence[str]
    compressions: Sequence[float | str]
    seeds: Sequence[int] = (0,)
    epochs: int = 10
    model_options: Mapping[str, Any] = field(default_factory=dict)
    dense: bool = False
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    weight_decay: float = 0.0
    iterations: int | None = None
    calibration_per_class: int = 10
    data_root: str | None = None
    threads: int = 1
    criterion_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    #: The fields that list the grid's values; a resume may change these, never the others.
    AXES = ("criteria", "compressions", "seeds", "dense")

    def __post_init__(self) -> None:
        from synflow_plugin.criteria import list_criteria
        from synflow_plugin.data import DATASETS
        from synflow_plugin.models import MODELS
        from synflow_plugin.train import OPTIMIZERS

        if not isinstance(self.model, str) or self.model.strip().lower() not in MODELS:
            raise PruningError(f"Grid(): model={self.model!r} is not a zoo model; expected one of: "
                               f"{', '.join(MODELS)}")
        self.model = self.model.strip().lower()
        key = self.dataset.lower().replace("-", "").replace("_", "") if isinstance(self.dataset, str) else None
        if key not in DATASETS:
            raise PruningError(f"Grid(): dataset={self.dataset!r} is not valid; expected one of: "
                               f"{', '.join(DATASETS)}")
        self.dataset = key
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, os.PathLike)):
                raise PruningTypeError(f"Grid(): data_root={self.data_root!r} should be a folder path or None")
            self.data_root = os.fspath(self.data_root)
        if DATASETS[key].needs_root and not self.data_root:
            raise PruningError(f"Grid(): dataset={key!r} is read from disk: give data_root=<folder holding "
                               f"{'cifar-100-python' if DATASETS[key].num_classes == 100 else 'cifar-10-batches-py'}/> "
                               "(--data-root)")

        known = list_criteria()
        criteria = []
        for name in _as_tuple(self.criteria, "criteria"):
            if not isinstance(name, str):
                raise PruningTypeError(f"Grid(): criteria: {name!r} should be a criterion name (a str)")
            if name.strip().lower() == DENSE:
                raise PruningError(f"Grid(): criteria: {name!r} is not a criterion; give dense=True (--dense) for "
                                   "the unpruned baseline")
            if name.strip().lower() not in known:
                raise PruningError(f"Grid(): criteria: unknown criterion {name!r}; expected some of: "
                                   f"{', '.join(known)}")
            criteria.append(name.strip().lower())
        self.criteria = _unique(tuple(criteria), "criteria")
        self.compressions = _unique(tuple(_compression(v) for v in _as_tuple(self.compressions, "compressions")),
                                    "compressions")
        seeds = _as_tuple(self.seeds, "seeds")
        for seed in seeds:
            if isinstance(seed, str) and seed.isdigit():
                continue
            if not _is_int(seed) or seed < 0:
                raise PruningError(f"Grid(): seeds: {seed!r} should be an int >= 0")
        self.seeds = _unique(tuple(int(s) for s in seeds), "seeds")

        _positive(self.epochs, "epochs")
        _positive(self.batch_size, "batch_size")
        _positive(self.calibration_per_class, "calibration_per_class")
        _positive(self.threads, "threads")
        _positive(self.lr, "lr", "number")
        if self.iterations is not None:
            _positive(self.iterations, "iterations")
        if not _is_number(self.weight_decay) or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise PruningError(f"Grid(): weight_decay={self.weight_decay!r} should be a number >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise PruningError(f"Grid(): optimizer={self.optimizer!r} is not valid; expected one of {OPTIMIZERS}")
        if not isinstance(self.dense, bool):
            raise PruningTypeError(f"Grid(): dense={self.dense!r} should be True or False")
        if not isinstance(self.model_options, Mapping) or not all(isinstance(k, str) for k in self.model_options):
            raise PruningTypeError(f"Grid(): model_options={self.model_options!r} should be a dict of "
                                   "factory keywords, e.g. {'depth': 3, 'width': 32}")
        self.model_options = dict(self.model_options)
        try:
            json.dumps(self.model_options, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PruningTypeError(f"Grid(): model_options={self.model_options!r} must hold JSON values "
                                   f"(numbers, strings, booleans, lists): {exc}") from None
        self.criterion_options = _criterion_options(self.criterion_options, known)
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        self.calibration_per_class, self.threads = int(self.calibration_per_class), int(self.threads)
        self.lr, self.weight_decay = float(self.lr), float(self.weight_decay)
        self.iterations = None if self.iterations is None else int(self.iterations)

    # ------------------------------------------------------------------ forms
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the grid") -> "Grid":
        """A grid from a mapping of its field names (a JSON object); unknown keys and
        missing required ones are refused with the list of valid keys."""
        if not isinstance(values, Mapping):
            raise PruningTypeError(f"{source} should be a JSON object of grid settings, got {type(values).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in fields]
        if unknown:
            hint = ""
            if any(k in ("engine", "out", "overwrite") for k in unknown):
                hint = " (engine, out and overwrite are command-line options, not grid settings)"
            raise PruningError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}{hint}; valid keys: "
                               f"{', '.join(fields)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise PruningError(f"{source} lacks {', '.join(missing)}: a sweep needs {', '.join(required)} "
                               "(command-line flags --model, --dataset, --criteria, --compressions, or keys "
                               "of the --config file)")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Grid":
        """A grid from a JSON file holding one object of grid settings (read as data, never run)."""
        return cls.from_dict(_read_json_object(Path(path)), source=f"config '{path}'")

    def as_dict(self) -> dict[str, Any]:
        """The grid as JSON-ready values (lists for tuples)."""
        out = dataclasses.asdict(self)
        for name in ("criteria", "compressions", "seeds"):
            out[name] = list(out[name])
        out["model_options"] = dict(self.model_options)
        out["criterion_options"] = {k: dict(v) for k, v in self.criterion_options.items()}
        return out

    def settings(self) -> dict[str, Any]:
        """What every trial shares: the grid without its axes (:attr:`AXES`) and without
        settings that do not change a result (the data folder)."""
        return {k: v for k, v in self.as_dict().items() if k not in self.AXES and k not in _NOT_IDENTITY}

    def trials(self) -> list[Trial]:
        """The trials, in a fixed order: the dense baselines (one per seed, if asked for),
        then per criterion, per compression, per seed."""
        shared = dict(model=self.model, dataset=self.dataset, epochs=self.epochs, model_options=self.model_options,
                      lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
                      weight_decay=self.weight_decay, iterations=self.iterations,
                      calibration_per_class=self.calibration_per_class, threads=self.threads,
                      data_root=self.data_root)
        out = [Trial(DENSE, 1.0, seed, **shared) for seed in self.seeds] if self.dense else []
        out += [Trial(c, comp, seed, **shared, criterion_options=dict(self.criterion_options.get(c, {})))
                for c in self.criteria for comp in self.compressions for seed in self.seeds]
        return out


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``: data only (never imported or evaluated); a repeated key is refused."""
    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise PruningError(f"config '{path}': the key {key!r} appears twice; give it once")
            out[key] = value
        return out

    if not path.is_file():
        raise PruningError(f"config '{path}' does not exist or is not a file; give a JSON file such as sweep.json")
    try:
        value = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PruningError(f"config '{path}' is not valid JSON ({exc}); the config file is a JSON object such "
                           'as {"model": "mlp", "dataset": "digits", "criteria": ["synflow"], '
                           '"compressions": [10, 100]}') from None
    if not isinstance(value, dict):
        raise PruningError(f"config '{path}' holds a JSON {type(value).__name__}; it should hold one object of "
                           "grid settings")
    return value


# --------------------------------------------------------------------------- one trial
_DATA_CACHE: dict[tuple, tuple] = {}


def _dataset(name: str, root: str | None):
    """``(train, test)`` of a data set, loaded once per process (training never changes them)."""
    from synflow_plugin.data import load_dataset

    key = (name, root)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(name, root=root)
    return _DATA_CACHE[key]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _isolated(threads: int):
    """Run with ``threads`` torch threads; put the caller's threads and random states back after."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads())
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        torch.set_num_threads(saved[3])


def _base_record(trial: Trial) -> dict[str, Any]:
    return {
        "trial": trial.key, "criterion": trial.criterion, "compression": trial.compression,
        "amount": trial.amount, "seed": trial.seed, "model": trial.model,
        "model_options": dict(trial.model_options), "dataset": trial.dataset, "epochs": trial.epochs,
        "criterion_options": dict(trial.criterion_options), "iterations": None, "status": None, "error": None,
        "traceback": None, "accuracy": None, "test_loss": None,
        "train_loss": None, "density": None, "remaining": None, "prunable": None, "collapsed_layers": None,
        "warnings": [], "times": {},
    }


def _execute(trial: Trial, record: dict[str, Any], times: dict[str, float], train, test) -> None:
    from torch.nn.utils import prune

    from synflow_plugin.criteria import get_criterion
    from synflow_plugin.data import DATASETS, calibration_batches, make_loader
    from synflow_plugin.demo import criterion_class, criterion_kwargs
    from synflow_plugin.diagnostics import layer_report
    from synflow_plugin.masking import compute_masks
    from synflow_plugin.models import create_model
    from synflow_plugin.targets import prunable_parameters
    from synflow_plugin.train import evaluate, train_model

    start = time.perf_counter()
    info = DATASETS[trial.dataset]
    _seed_everything(trial.seed)  # after the (cached or not) load, so both give the same draws
    model = create_model(trial.model, num_classes=info.num_classes, input_shape=info.input_shape,
                         **trial.model_options)
    params = prunable_parameters(model)
    if not params:
        raise PruningError(f"model {trial.model!r} has no conv or linear weight to prune")
    times["setup"] += time.perf_counter() - start

    start = time.perf_counter()
    if trial.criterion != DENSE:
        caps = criterion_class(trial.criterion)
        options = dict(trial.criterion_options)
        # A criterion that trains in levels of its own (IMP) takes its count from its own
        # options only: the grid's iterations are the other criteria's rounds.
        own_rounds = caps.needs_training and caps.default_iterations <= 1
        iterations = options.pop("iterations", None if own_rounds else trial.iterations)
        example = torch.randn(1, *info.input_shape)
        data = None
        if caps.reads_training_set:  # trains on the training set itself, in the trial's order
            data = make_loader(train, batch_size=trial.batch_size, shuffle=True, seed=trial.seed)
        elif caps.needs_data:
            data = calibration_batches(train, samples_per_class=trial.calibration_per_class, seed=trial.seed)
        if caps.needs_training:
            options["train_fn"] = _train_fn(trial, train, test)
            if options.get("rewind_step"):  # the trial trains the rewound weights, as IMP prescribes
                options["rewind_into"] = model
        kwargs = criterion_kwargs(caps, example_inputs=example, data=data, iterations=iterations,
                                  seed=trial.seed)
        if "seed" in kwargs:  # a criterion option: the instance is built here
            options["seed"] = kwargs.pop("seed")
        if own_rounds and iterations is not None:
            kwargs["iterations"] = iterations  # IMP's levels: its rounds are its own
        criterion = get_criterion(trial.criterion, **options)
        masks = compute_masks(model, params, criterion, trial.amount, progress=False,
                              caller=f"sweep trial {trial.key}", **kwargs)
        history = getattr(criterion, "history", None)
        record["iterations"] = len(history) if history else kwargs.get("iterations", caps.default_iterations)
        for (module, name), mask in zip(params, masks):
            prune.custom_from_mask(module, name, mask)
    times["prune"] = time.perf_counter() - start
    rows = layer_report(model)
    record["prunable"] = sum(r.size for r in rows)
    record["remaining"] = sum(r.remaining for r in rows)
    record["density"] = record["remaining"] / record["prunable"]
    record["collapsed_layers"] = [r.name for r in rows if r.collapsed]

    start = time.perf_counter()
    result = train_model(model, train, test, epochs=trial.epochs, batch_size=trial.batch_size, lr=trial.lr,
                         optimizer=trial.optimizer, weight_decay=trial.weight_decay, seed=trial.seed,
                         progress=False)
    times["train"] = time.perf_counter() - start
    start = time.perf_counter()
    accuracy, loss = evaluate(model, test)
    times["eval"] = time.perf_counter() - start
    record.update(accuracy=accuracy, test_loss=loss, train_loss=result.train_loss)
    for name in ("test_loss", "train_loss"):
        if not math.isfinite(record[name]):  # kept out of the file as null: JSON has no NaN
            warnings.warn(f"{name} is {record[name]}: the training diverged (try a smaller lr)", RuntimeWarning)
            record[name] = None


def _train_fn(trial: Trial, train, test) -> Callable[[torch.nn.Module], None]:
    """``train_fn(model)`` for a criterion that ``needs_training``: the trial's own training
    (:func:`~synflow_plugin.train.train_model` with its epochs, optimizer, learning rate,
    batch size, weight decay and seed), so every level trains as the ticket will."""
    from synflow_plugin.train import train_model

    def train_fn(model: torch.nn.Module) -> None:
        train_model(model, train, test, epochs=trial.epochs, batch_size=trial.batch_size, lr=trial.lr,
                    optimizer=trial.optimizer, weight_decay=trial.weight_decay, seed=trial.seed, progress=False)

    return train_fn


def run_trial(trial: Trial) -> dict[str, Any]:
    """Run one trial in this process and return its record; a failure of the trial is
    recorded (``status: "failed"``, ``error``, ``traceback``), never raised.

    The torch, NumPy and Python seeds and torch's thread count are set inside, and the
    caller's are restored afterwards, so the record does not depend on the process.
    Times are wall seconds: ``setup`` (data and model), ``prune`` (scoring and masks: the
    time to find the ticket, with IMP's level trainings and GemMiner's score training),
    ``train`` (:func:`~synflow_plugin.train.train_model`, which ends with a test pass of
    its own), ``eval`` (the test pass whose accuracy is recorded) and ``total``.
    """
    if not isinstance(trial, Trial):
        raise PruningTypeError(f"run_trial(): expected a Trial (from Grid.trials()), got {type(trial).__name__}")
    start = time.perf_counter()
    record = _base_record(trial)
    times: dict[str, float] = {"setup": 0.0, "prune": 0.0, "train": 0.0, "eval": 0.0}
    caught: list = []
    try:
        with _isolated(trial.threads):
            # Imports and the data load come first and stay outside the recorded warnings:
            # they warn once per process, and a record must not depend on the process.
            for module in ("synflow_plugin.demo", "synflow_plugin.train"):
                importlib.import_module(module)

            train, test = _dataset(trial.dataset, trial.data_root)
            times["setup"] = time.perf_counter() - start
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _execute(trial, record, times, train, test)
        record["status"] = "ok"
    except Exception as exc:  # a trial's failure is data: it goes into the record
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", accuracy=None,
                      traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    seen: dict[str, None] = {}
    for w in caught or ():
        seen.setdefault(f"{w.category.__name__}: {w.message}", None)
    record["warnings"] = list(seen)[:_MAX_WARNINGS]
    times["total"] = time.perf_counter() - start
    record["times"] = times
    return record


def _ray_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: a trial from its dict, run where Ray placed it."""
    return run_trial(Trial(**trial))


def _failed_record(trial: Trial, exc: BaseException) -> dict[str, Any]:
    """The record of a trial whose task did not return (its worker died, the task was lost)."""
    record = _base_record(trial)
    record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                  traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    record["times"] = {"setup": 0.0, "prune": 0.0, "train": 0.0, "eval": 0.0, "total": 0.0}
    return record


# --------------------------------------------------------------------------- engines
def _run_local(_, trials: Sequence[Trial], done: Callable[[dict[str, Any]], None]) -> None:
    for trial in trials:
        done(run_trial(trial))


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "engine='ray' needs the 'ray' package, which is not installed. Install the Ray extra: "
            "pip install 'synflow-plugin[ray]' (or use engine='local', --engine local)"
        ) from exc
    return ray


def _causes(exc: BaseException) -> str:
    """The messages of ``exc`` and the exceptions it was raised from (Ray puts the reason
    a connection failed, e.g. a missing authentication token, in the cause)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip().splitlines()
        parts.append(f"{type(exc).__name__}: {text[-1] if text else ''}")
        exc = exc.__cause__ or exc.__context__
    return "; caused by ".join(parts)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) address where nothing listens: for
    such an address ``ray.init`` retries for minutes (Ray 2.60) before it gives up."""
    import re
    import socket

    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if match is None:  # "auto", "local", or a form Ray resolves itself
        return
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise PruningError(f"engine='ray': nothing answers at RAY_ADDRESS={address!r} ({type(exc).__name__}: "
                           f"{exc}); start the cluster (`ray start --head`) or fix the address (`ray status` "
                           "on the head prints it), unset RAY_ADDRESS for a local instance, or use "
                           "engine='local'") from None


@contextlib.contextmanager
def _ray_session():
    """An initialised Ray: the caller's if it has one; else the cluster at ``RAY_ADDRESS``
    when that is set (``ray.init()`` reads it); else a new local instance, shut down
    afterwards. ``address="local"`` keeps a ``ray start`` cluster of this machine, or the
    stale record of one that died, from being joined without ``RAY_ADDRESS``."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = os.environ.get("RAY_ADDRESS")
    try:
        ray.init(**({} if address else {"address": "local", "include_dashboard": False}))
    except Exception as exc:
        where = f"the Ray cluster at RAY_ADDRESS={address!r}" if address else "a local Ray instance"
        raise PruningError(f"engine='ray': could not start or reach {where} ({_causes(exc)}); check that the "
                           "cluster is up (`ray status`) and, if it uses token authentication, that this machine "
                           "has its token (RAY_AUTH_MODE=token, ~/.ray/auth_token); unset RAY_ADDRESS for a local "
                           "instance, or use engine='local'") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(ray, trials: Sequence[Trial], done: Callable[[dict[str, Any]], None]) -> None:
    """Each trial as one Ray task of ``threads`` CPUs (Ray places them, and retries a task
    whose worker died); the records come back here, where they are written."""
    task = ray.remote(_ray_trial)
    pending = {}
    try:
        for trial in trials:
            pending[task.options(num_cpus=trial.threads).remote(trial.as_dict())] = trial
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                trial = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the task was lost after Ray's retries
                    record = _failed_record(trial, exc)
                done(record)
    finally:
        for ref in pending:  # interrupted: do not leave the cluster busy with abandoned trials
            with contextlib.suppress(Exception):
                ray.cancel(ref)


# --------------------------------------------------------------------------- results file
@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        results_path: ``<out>/results.json``.
        figure_path: ``<out>/accuracy.png``, or None when nothing was drawn (no finished
            trial, ``plot=False`` or matplotlib missing).
        records: every record of the file, in the grid's order (records of trials of
            an earlier run of the same settings that are not in this grid last).
        ran: trials run by this call.
        skipped: trials found finished in the file and not run again.
        failed: keys of this grid's trials whose record says ``"failed"``.
    """

    results_path: Path
    figure_path: Path | None
    records: list[dict[str, Any]]
    ran: int
    skipped: int
    failed: list[str]

    def summary(self) -> list[dict[str, Any]]:
        """:func:`summarise` of the records."""
        return summarise(self.records)


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The contents of ``<out_dir>/results.json`` written by :func:`run_sweep`: ``grid``,
    ``records`` and the run's ``environment``.

    Raises:
        PruningError: the file is missing, not JSON, or not a sweep's.
    """
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise PruningError(f"'{path}' does not exist; run `synflow-plugin sweep --out {out_dir} ...` first")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PruningError(f"'{path}' is not valid JSON ({exc}); every write of a sweep replaces it whole, so "
                           "another program wrote it: move it away, or rerun with --overwrite") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise PruningError(f"'{path}' is not the results file of a sweep (it has no \"format\": \"{_FORMAT}\"); "
                           "choose another --out, or rerun with --overwrite to replace it")
    if payload.get("version") != _FORMAT_VERSION:
        raise PruningError(f"'{path}' has sweep format version {payload.get('version')!r}, this version reads "
                           f"{_FORMAT_VERSION}; rerun with --overwrite or choose another --out")
    records = payload.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("trial"), str)
                                                for r in records):
        raise PruningError(f"'{path}' is damaged: 'records' should be a list of trial records, each with a "
                           "'trial' key; rerun with --overwrite or choose another --out")
    if not isinstance(payload.get("grid", {}), dict):
        raise PruningError(f"'{path}' is damaged: 'grid' should be a mapping of the sweep's settings; rerun "
                           "with --overwrite or choose another --out")
    for record in records:
        problem = _record_problem(record)
        if problem:
            raise PruningError(f"'{path}' is damaged: the record {record['trial']!r} {problem}; rerun with "
                               "--overwrite or choose another --out")
    return payload


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _record_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with one record read back from a results file (None: nothing)."""
    if not isinstance(record.get("criterion"), str):
        return "has no criterion"
    if not _finite(record.get("compression")) or record["compression"] < 1:
        return f"has compression {record.get('compression')!r}, not a number >= 1"
    if isinstance(record.get("seed"), bool) or not isinstance(record.get("seed"), int):
        return f"has seed {record.get('seed')!r}, not an int"
    key = f"{record['criterion']}|{float(record['compression'])!r}|{record['seed']}"
    if record["trial"] != key:
        return f"says criterion {record['criterion']!r}, compression {record['compression']!r}, seed {record['seed']!r}"
    if record.get("status") == "ok" and not (_finite(record.get("accuracy")) and 0 <= record["accuracy"] <= 1):
        return f"is ok but has accuracy {record.get('accuracy')!r}, not a fraction in [0, 1]"
    return None


def _compatible_records(out: Path, grid: Grid) -> list[dict[str, Any]]:
    """The records of an earlier run into ``out``, if its settings are this grid's."""
    if not (out / RESULTS_FILE).exists():
        return []
    payload = load_results(out)
    before = {**_ADDED_SETTINGS, **dict(payload.get("grid") or {})}
    before = {k: v for k, v in before.items() if k not in Grid.AXES and k not in _NOT_IDENTITY}
    now = grid.settings()
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if changed:
        what = "; ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} here" for k in changed)
        raise PruningError(
            f"'{out / RESULTS_FILE}' holds a sweep with other settings ({what}). A rerun into the same folder "
            f"resumes that sweep (its criteria, compressions and seeds may change, nothing else): pass "
            f"--overwrite (overwrite=True) to discard its {len(payload['records'])} record(s), or choose another --out"
        )
    return payload["records"]


@contextlib.contextmanager
def _locked(out: Path):
    """Hold ``out/.sweep.lock`` so that a second sweep into the same folder is refused
    rather than overwriting this one's records (POSIX; elsewhere no lock is taken)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    handle = open(out / _LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PruningError(f"another sweep is writing into '{out}' now; wait for it to finish or choose "
                               "another --out (two sweeps into one folder would overwrite each other's "
                               "records)") from None
        yield
    finally:
        handle.close()  # closing releases the lock


def _environment(engine: str) -> dict[str, Any]:
    from synflow_plugin import __version__

    env = {"synflow_plugin": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "machine": f"{platform.machine()} {platform.system()}",
           "engine": engine}
    if engine == "ray":
        env["ray_address"] = os.environ.get("RAY_ADDRESS")
    return env


def _plan(grid: Grid, out: Path, overwrite: bool):
    """``(trials to run, finished records by key, other records kept)`` for a run into ``out``."""
    previous = [] if overwrite else _compatible_records(out, grid)
    trials = grid.trials()
    keys = {t.key for t in trials}
    finished = {r["trial"]: r for r in previous if r["trial"] in keys and r.get("status") == "ok"}
    others = [r for r in previous if r["trial"] not in keys]
    return [t for t in trials if t.key not in finished], finished, others


def _probe(grid: Grid) -> None:
    """Build the grid's model once and run it on a zero input of the data set's shape,
    so that a model that cannot take the data is refused before any trial runs."""
    from synflow_plugin.data import DATASETS
    from synflow_plugin.models import create_model

    info = DATASETS[grid.dataset]
    try:
        with _isolated(grid.threads):  # the caller's random state is left as it was
            model = create_model(grid.model, num_classes=info.num_classes, input_shape=info.input_shape,
                                 **grid.model_options)
    except PruningError as exc:
        raise PruningError(f"Grid(): model={grid.model!r} with model_options={grid.model_options!r} cannot be "
                           f"built for {grid.dataset} (inputs {info.input_shape}, {info.num_classes} classes): "
                           f"{exc}") from None
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *info.input_shape))
    except Exception as exc:
        raise PruningError(f"Grid(): model={grid.model!r} does not run on {grid.dataset} inputs of shape "
                           f"{info.input_shape} ({type(exc).__name__}: {exc}); choose a model for that data "
                           "(mlp and conv take any shape, the VGGs and ResNets 3x32x32 images)") from None


def run_sweep(
    grid: Grid | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    engine: str = "local",
    overwrite: bool = False,
    progress: bool | None = None,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    r"""Run every trial of ``grid`` that ``out_dir`` has not finished, and write the results.

    ``<out_dir>/results.json`` is rewritten atomically after each finished trial; a rerun
    into the same folder (after a crash, a lost worker, or with more criteria, compressions
    or seeds) runs only the trials it lacks and those that failed. Its other settings
    (model, data set, epochs, ...) must be the same, or ``overwrite=True`` starts afresh.
    A trial that fails is recorded with its error and does not stop the sweep. Then
    ``<out_dir>/accuracy.png`` shows mean ± std test accuracy per criterion vs compression.

    Args:
        grid: a :class:`Grid`, or a mapping of its fields (e.g. a loaded JSON config).
        out_dir: the output folder (created).
        engine: ``"local"``: the trials one after the other in this process; ``"ray"``: one
            Ray task per trial (``threads`` CPUs each) on an already initialised Ray, else on
            the cluster named by ``RAY_ADDRESS``, else on a local instance started (and shut
            down) here. Both give the same records, times aside.
        overwrite: discard the records already in ``out_dir``.
        progress: a tqdm bar over the trials (``None``: only on a terminal).
        plot: draw ``accuracy.png`` (needs matplotlib; skipped with a warning without it).
        log: receives one line per finished trial (default: none).

    Returns:
        A :class:`SweepResult`.

    Raises:
        PruningError: a bad grid value, engine or folder, ``out_dir`` holding another
            sweep, or another sweep writing into ``out_dir`` now.
        ImportError: ``engine="ray"`` without ray (``pip install 'synflow-plugin[ray]'``).

    >>> import tempfile
    >>> grid = Grid(model="mlp", dataset="digits", criteria=["magnitude"], compressions=[10],
    ...             epochs=1, model_options={"depth": 2, "width": 8})
    >>> result = run_sweep(grid, tempfile.mkdtemp(), plot=False, progress=False)
    >>> record = result.records[0]  # 64*8 + 8*10 = 592 weights; 10x keeps 592 - round(0.9 * 592)
    >>> result.ran, record["status"], record["prunable"], record["remaining"]
    (1, 'ok', 592, 59)
    """
    if not isinstance(grid, Grid):
        grid = Grid.from_dict(grid)
    if engine not in ENGINES:
        raise PruningError(f"run_sweep(): engine={engine!r} is not valid; expected one of {ENGINES}")
    if engine == "ray":
        ray = _import_ray()  # fail before any work, naming the extra
        if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
            _check_reachable(os.environ["RAY_ADDRESS"])
    _probe(grid)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PruningError(f"run_sweep(): out_dir '{out}' is a file; give a folder (it is created)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    trials = grid.trials()
    order = {t.key: i for i, t in enumerate(trials)}
    with _locked(out):
        todo, records, others = _plan(grid, out, overwrite)
        skipped = len(trials) - len(todo)
        environment = _environment(engine)

        def ordered() -> list[dict[str, Any]]:
            return sorted(records.values(), key=lambda r: order[r["trial"]]) + others

        def write() -> None:
            write_json_atomic(path, {"format": _FORMAT, "version": _FORMAT_VERSION, "grid": grid.as_dict(),
                                      "trials": len(trials), "environment": environment, "records": ordered()})

        failures = 0
        bar = None

        def finished(record: dict[str, Any]) -> None:
            nonlocal failures
            records[record["trial"]] = record
            write()
            failures += record["status"] != "ok"
            bar.update(1)
            if failures:
                bar.set_postfix(failed=failures)
            if log is not None:
                if record["status"] == "ok":
                    log(f"{record['trial']}: accuracy {100 * record['accuracy']:.2f}% "
                        f"({record['times']['total']:.1f} s)")
                else:
                    log(f"{record['trial']}: failed: {record['error']}")

        # Ray is reached before the file is written, so a cluster that cannot be reached
        # leaves an earlier results.json as it was, even with overwrite=True.
        session = _ray_session() if engine == "ray" and todo else contextlib.nullcontext()
        with session as ray:
            write()  # the settings are on disk before the first trial ends
            bar = tqdm(total=len(trials), initial=skipped, desc="sweep", unit="trial",
                       disable=(not progress) if progress is not None else None)
            try:
                if todo:
                    (_run_ray if engine == "ray" else _run_local)(ray, todo, finished)
            finally:
                bar.close()
    listed = ordered()
    figure = None
    if plot and any(r.get("status") == "ok" for r in listed):
        figure = plot_sweep(listed, out / FIGURE_FILE, title=f"{grid.model} on {grid.dataset}, "
                                                             f"{grid.epochs} epochs")
    failed = [r["trial"] for r in listed if r["trial"] in order and r.get("status") != "ok"]
    return SweepResult(path, figure, listed, ran=len(todo), skipped=skipped, failed=failed)


# --------------------------------------------------------------------------- summaries and figure
def summarise(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per ``(criterion, compression)``, in first-seen order: ``mean_accuracy`` and
    ``std_accuracy`` (population std) over the finished seeds, ``seeds`` (how many
    finished), ``failed`` and ``collapsed_runs`` (finished runs with a collapsed layer).

    >>> rows = summarise([{"criterion": "synflow", "compression": 10.0, "status": "ok", "accuracy": 0.5,
    ...                    "collapsed_layers": []},
    ...                   {"criterion": "synflow", "compression": 10.0, "status": "ok", "accuracy": 0.7,
    ...                    "collapsed_layers": ["fc.weight"]}])
    >>> rows[0]["mean_accuracy"], round(rows[0]["std_accuracy"], 3), rows[0]["collapsed_runs"]
    (0.6, 0.1, 1)
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["criterion"], record["compression"]), []).append(record)
    out = []
    for (criterion, compression), members in groups.items():
        ok = [m for m in members if m.get("status") == "ok"]
        accs = [float(m["accuracy"]) for m in ok]
        out.append({
            "criterion": criterion, "compression": compression,
            "mean_accuracy": statistics.fmean(accs) if accs else None,
            "std_accuracy": statistics.pstdev(accs) if accs else None,
            "seeds": len(ok), "failed": len(members) - len(ok),
            "collapsed_runs": sum(bool(m.get("collapsed_layers")) for m in ok),
        })
    return out


#: One colour per criterion in every figure (sweeps and the demo).
CRITERION_COLORS = {"magnitude": "tab:orange", "random": "tab:gray", "snip": "tab:green", "grasp": "tab:purple",
                    "synflow": "tab:blue", "dense": "black", "gemminer": "tab:red", "imp": "tab:brown",
                    "ntksap": "tab:cyan", "prospr": "tab:olive", "phew": "tab:pink", "itersnip": "darkolivegreen",
                    "force": "firebrick"}


def plot_sweep(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
               title: str | None = None) -> Path | None:
    """Draw test accuracy vs compression (log axis), mean ± std over seeds per criterion,
    the dense baseline dashed and chance dotted, into ``path``; only finished records count.

    Returns:
        ``path``, or None when matplotlib is not installed (a warning says how to get it)
        or no record finished.
    """
    from synflow_plugin.data import DATASETS

    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("plot_sweep(): matplotlib is not installed, so no figure was drawn; "
                      "pip install 'synflow-plugin[demo]'", RuntimeWarning, stacklevel=2)
        return None
    rows = [r for r in summarise(records) if r["seeds"]]
    if not rows:
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    dense = [r for r in rows if r["criterion"] == DENSE]
    if dense:
        ax.axhline(100 * dense[0]["mean_accuracy"], color="black", ls="--", lw=1, label="dense")
    datasets = {r.get("dataset") for r in records}
    if len(datasets) == 1 and next(iter(datasets)) in DATASETS:
        ax.axhline(100 / DATASETS[next(iter(datasets))].num_classes, color="black", ls=":", lw=1, label="chance")
    for criterion in dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != DENSE):
        points = sorted((r for r in rows if r["criterion"] == criterion), key=lambda r: r["compression"])
        ax.errorbar([r["compression"] for r in points], [100 * r["mean_accuracy"] for r in points],
                    yerr=[100 * r["std_accuracy"] for r in points], marker="o", capsize=3,
                    color=CRITERION_COLORS.get(criterion), label=criterion)
    ax.set_xscale("log")
    ax.set_xlabel("compression (all weights / kept weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Pruned at init, then trained{': ' + title if title else ''}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line
_EPILOG = """\
examples:
  synflow-plugin sweep --model mlp --dataset digits --criteria synflow,snip,magnitude \\
      --compressions 10,100,1000 --seeds 0,1,2 --epochs 15 --dense --out runs/sweep
  synflow-plugin sweep --config sweep.json --engine ray --out runs/sweep
  RAY_ADDRESS=10.0.0.5:6379 synflow-plugin sweep --config sweep.json --engine ray --out runs/sweep

--config reads a JSON object whose keys are the grid settings (model, dataset, criteria,
compressions, seeds, epochs, model_options, dense, lr, batch_size, optimizer, weight_decay,
iterations, calibration_per_class, data_root, threads, criterion_options); a flag given as well overrides its key.
The file is data: nothing in it is imported or run.

Resuming: a rerun into the same --out keeps the finished trials of its results.json and runs
only the missing and failed ones (after a crash, a lost worker, or with criteria, compressions
or seeds added); the other settings must be those of the first run, or --overwrite starts
afresh. results.json is rewritten atomically after every finished trial.

Exit status: 0 when every trial finished, 1 when some failed (their errors are in
results.json; a rerun retries them), 2 for a bad argument."""


def _compressions_arg(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"invalid list {text!r}: give comma-separated compressions, e.g. 10,100,1e3")
    return tuple(parse_compression(t) for t in items)


def _seeds_arg(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t.isdigit() for t in items):
        raise argparse.ArgumentTypeError(f"invalid seeds {text!r}: give comma-separated integers >= 0, e.g. 0,1,2")
    return tuple(int(t) for t in items)


def _criterion_option_arg(text: str) -> tuple[str, str, Any]:
    head, sep, _ = text.partition("=")
    criterion, dot, _ = head.partition(".")
    if not sep or not dot or not criterion:
        raise argparse.ArgumentTypeError(f"invalid criterion option {text!r}: write CRITERION.NAME=VALUE, "
                                         "e.g. imp.rate=0.5")
    key, value = _key_value(text[len(criterion) + 1:])
    return criterion.strip().lower(), key, value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to an ``argparse`` sub-parsers object; returns its parser.

    ``synflow-plugin sweep`` runs :func:`run_sweep` through :func:`main`.
    """
    from synflow_plugin.train import OPTIMIZERS

    p = subparsers.add_parser(
        "sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="accuracy sweep: criteria x compressions x seeds, pruned at init and trained (resumable; local or Ray)",
        description="Prune a freshly initialised zoo model with every criterion at every compression, for\n"
                    "every seed, train it on --dataset and test it; write DIR/results.json (one record per\n"
                    "trial) and DIR/accuracy.png. --engine ray runs each trial as a Ray task, on the cluster\n"
                    "named by RAY_ADDRESS when it is set. A rerun into the same --out resumes.",
        epilog=_EPILOG,
    )
    grid = p.add_argument_group("the grid (also the keys of --config)")
    grid.add_argument("--config", metavar="FILE.json", default=None,
                      help="JSON object of grid settings; flags given as well override its keys")
    grid.add_argument("--model", default=None, metavar="NAME", help="zoo model (see `synflow-plugin list`)")
    grid.add_argument("--model-option", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                      help="model factory keyword, repeatable, e.g. depth=3 (merged over the config's model_options)")
    grid.add_argument("--criterion-option", type=_criterion_option_arg, action="append", default=[],
                      metavar="CRITERION.NAME=VALUE",
                      help="a criterion's keyword, repeatable, e.g. imp.rate=0.5 or gemminer.iterations=10 "
                           "(merged over the config's criterion_options)")
    grid.add_argument("--dataset", default=None, metavar="NAME", help="digits, mnist1d, cifar10 or cifar100")
    grid.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the CIFAR files (CIFAR only)")
    grid.add_argument("--criteria", default=None, metavar="A,B", help="comma-separated criterion names")
    grid.add_argument("--compressions", type=_compressions_arg, default=None, metavar="C,C",
                      help="comma-separated ratios of all weights to kept weights: 10,100, 1e3 or 10^2.5")
    grid.add_argument("--seeds", type=_seeds_arg, default=None, metavar="S,S",
                      help="comma-separated seeds of initialisation, calibration batch and data order (default: 0)")
    grid.add_argument("--epochs", type=_positive_int, default=None, help="training epochs per trial (default: 10)")
    grid.add_argument("--dense", action="store_true", default=None,
                      help="also train the unpruned model once per seed (the figure's dashed line)")
    grid.add_argument("--lr", type=_positive_float, default=None, help="initial learning rate, cosine schedule "
                                                                         "(default: 1e-3)")
    grid.add_argument("--batch-size", type=_positive_int, default=None, help="(default: 128)")
    grid.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="(default: adam)")
    grid.add_argument("--weight-decay", type=_nonnegative_float, default=None, help="(default: 0)")
    grid.add_argument("--iterations", type=_positive_int, default=None,
                      help="rounds of the iterative criteria (default: each one's own, SynFlow 100)")
    grid.add_argument("--calibration-per-class", type=_positive_int, default=None, metavar="N",
                      help="samples per class in the batch SNIP/GraSP score on (default: 10)")
    grid.add_argument("--threads", type=_positive_int, default=None,
                      help="torch threads inside each trial, and CPUs per Ray task (default: 1); part of the "
                           "trial, since results depend on it in their last bits")
    run = p.add_argument_group("running")
    run.add_argument("--engine", choices=ENGINES, default="local",
                     help="local: in this process (default); ray: one Ray task per trial, on a local instance "
                          "or the cluster at RAY_ADDRESS (pip install 'synflow-plugin[ray]')")
    run.add_argument("--out", default="runs/sweep", metavar="DIR", help="output folder (default: %(default)s)")
    run.add_argument("--overwrite", action="store_true",
                     help="discard the records already in --out and start afresh. Without it a rerun into the "
                          "same --out resumes: finished trials are kept, missing and failed ones run")
    run.add_argument("--dry-run", action="store_true", help="print what would run and what is finished, run nothing")
    run.add_argument("--no-plot", action="store_true", help="do not draw DIR/accuracy.png")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(command_parser=p)
    return p


_FLAGS = ("model", "dataset", "data_root", "criteria", "compressions", "seeds", "epochs", "dense", "lr",
          "batch_size", "optimizer", "weight_decay", "iterations", "calibration_per_class", "threads")


def _grid_from_args(args) -> Grid:
    values: dict[str, Any] = {}
    source = "the command line"
    if args.config:
        values.update(_read_json_object(Path(args.config)))
        source = f"config '{args.config}' with the command line"
    for name in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.model_option:
        options = values.get("model_options", {})
        if not isinstance(options, dict):
            raise PruningTypeError(f"{source}: model_options={options!r} should be an object of factory keywords")
        values["model_options"] = {**options, **dict(args.model_option)}
    if getattr(args, "criterion_option", None):
        merged = values.get("criterion_options", {})
        if not isinstance(merged, dict):
            raise PruningTypeError(f"{source}: criterion_options={merged!r} should be an object of criterion name -> "
                                   "object of keywords")
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in merged.items()}
        for criterion, key, value in args.criterion_option:
            merged.setdefault(criterion, {})[key] = value
        values["criterion_options"] = merged
    return Grid.from_dict(values, source=source)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    compressions = sorted({r["compression"] for r in rows if r["criterion"] != DENSE})
    width = max([len("criterion")] + [len(r["criterion"]) for r in rows])
    lines = [f"  {'criterion':<{width}} " + " ".join(f"{format(c, 'g') + 'x':>15}" for c in compressions)]
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        cells = []
        for c in ([1.0] if criterion == DENSE else compressions):
            row = next((r for r in rows if r["criterion"] == criterion and r["compression"] == c), None)
            if row is None:
                cells.append(f"{'':>15}")
            elif row["mean_accuracy"] is None:
                cells.append(f"{'failed':>15}")
            else:
                mark = "*" if row["failed"] or row["collapsed_runs"] else ""
                text = f"{100 * row['mean_accuracy']:.1f} ± {100 * row['std_accuracy']:.1f}{mark}"
                cells.append(f"{text:>15}")
        lines.append(f"  {criterion:<{width}} " + " ".join(cells))
    return lines


def main(args: argparse.Namespace) -> int:
    """Run ``synflow-plugin sweep`` from parsed arguments; returns the exit status (0: every
    trial finished, 1: some failed or a missing extra; a bad argument exits with 2 and
    argparse's usage line)."""
    parser = getattr(args, "command_parser", None)
    try:
        grid = _grid_from_args(args)
        if args.dry_run:
            _probe(grid)
            todo, finished, _ = _plan(grid, Path(args.out), args.overwrite)
            print(f"{len(grid.trials())} trial(s) in the grid: {len(finished)} finished in {args.out}, "
                  f"{len(todo)} to run{' (--overwrite discards the finished ones)' if args.overwrite else ''}")
            for trial in todo:
                print(f"  {trial.key}")
            return 0
        progress = False if args.no_progress else None
        result = run_sweep(grid, args.out, engine=args.engine, overwrite=args.overwrite, progress=progress,
                           plot=not args.no_plot, log=tqdm.write)  # one line per trial, above the bar
    except ImportError as exc:
        if parser is None:
            raise
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    except PruningError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
    keys = {t.key for t in grid.trials()}
    rows = summarise(r for r in result.records if r["trial"] in keys)
    print(f"{grid.model} on {grid.dataset}, {grid.epochs} epoch(s): test accuracy (%), mean ± std over seeds "
          f"(* a seed failed or collapsed a layer)")
    for line in _table(rows):
        print(line)
    print(f"ran {result.ran} trial(s), {result.skipped} already finished; wrote {result.results_path}"
          + (f" and {result.figure_path}" if result.figure_path else ""))
    if result.failed:
        print(f"{len(result.failed)} trial(s) failed: {', '.join(result.failed[:5])}"
              f"{' ...' if len(result.failed) > 5 else ''}; their errors are in {result.results_path}; "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0

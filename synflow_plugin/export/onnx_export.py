"""Pruned model -> one verified ONNX file: permanent masks, compaction, export, checks.

:func:`export_onnx` runs the whole pipeline on a copy of the model:

1. masks made permanent (``torch.nn.utils.prune`` hooks removed, NNI ``masks=`` applied);
2. all-zero channels removed where possible (:func:`~synflow_plugin.export.compact_channels`;
   what cannot be removed is kept and named in a ``CompactionWarning``);
3. ``torch.onnx.export`` with the dynamo exporter, batch dimension dynamic (traced at
   batch 2 or more), eval mode (BatchNorm is folded into the convolutions by the
   exporter's optimiser);
4. optionally, sparse weights stored as ONNX ``sparse_initializer`` s (COO);
5. ``onnx.checker`` and ONNX Runtime outputs compared with torch's on the example inputs
   and, with a dynamic batch, on a batch of one more sample.

The file is written into a temporary directory beside ``path`` and renamed into
place only after it passed every check, so a failure leaves no file behind and an
existing file is replaced only with ``overwrite=True``. The directory's name records
its owner (``.<name>.<pid>@<host tag>.<random>.tmp``), so that the directory a killed
export left behind is removed by the next export to the same path (see
:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.export._common import (
    ExportError,
    as_input_tuple,
    check_nni_unwrapped,
    check_path,
    output_leaves,
    refuse_existing,
    relative_difference,
    require_onnx,
    require_torch_pruning,
)
from synflow_plugin.export.compact import _WEIGHTED, _compact, channel_counts
from synflow_plugin.permanent import make_permanent

__all__ = [
    "export_onnx",
    "ExportResult",
    "to_sparse_initializers",
    "densify_sparse_initializers",
    "MAX_IR_VERSION",
    "opset_range",
    "remove_stale_temporaries",
]

#: Highest ONNX IR version written: onnxruntime 1.31 loads IR 10 (ONNX 1.16/1.17) files.
MAX_IR_VERSION = 10
#: Above this many bytes of weights, tensors go to a ``<path>.data`` side file
#: (protobuf cannot serialise a message of 2 GiB or more).
SINGLE_FILE_LIMIT = 2**31 - 2**26
_log = logging.getLogger(__name__)
#: A temporary export directory whose owner cannot be checked (made on another machine,
#: before a reboot, or by a version that did not record its owner) counts as abandoned
#: once nothing in it has changed for this many seconds.
STALE_AFTER_S = 24 * 3600


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and what it checked.

    Attributes:
        path: the ONNX file.
        file_bytes: its size (plus the side file's, for models over 2 GB).
        external_data: the side file, or None (the normal case: one self-contained file).
        opset: the default-domain opset of the graph; ``ir_version`` its IR version.
        removed_channels: ``{layer name: (channels before, after)}`` for compacted layers.
        kept_channels: ``{layer name: reason}`` for layers whose all-zero channels were
            kept (exported as zeros; also given in a :class:`CompactionWarning`).
        dynamic_batch: whether the first dimension of every input is dynamic.
        verified_batch_sizes: the batch sizes at which ONNX Runtime was compared with
            torch (the example's and one more with a dynamic batch; empty without
            ``verify``). The file's ``metadata_props`` record both facts
            (``synflow_plugin.batch`` and ``synflow_plugin.verified_batch_sizes``).
        sparse_initializers: names of the weights stored as COO sparse tensors.
        max_abs_diff / max_rel_diff: ONNX Runtime vs torch on the example inputs
            (relative = divided by the largest output magnitude); None if not verified.
    """

    path: Path
    file_bytes: int
    opset: int
    ir_version: int
    external_data: Path | None = None
    removed_channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    sparse_initializers: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    kept_channels: dict[str, str] = field(default_factory=dict)
    dynamic_batch: bool = True
    verified_batch_sizes: tuple[int, ...] = ()

    def __str__(self) -> str:
        parts = [f"{self.path} ({self.file_bytes / 1e6:.2f} MB, opset {self.opset}, IR {self.ir_version})"]
        if self.removed_channels:
            before = sum(b for b, _ in self.removed_channels.values())
            after = sum(a for _, a in self.removed_channels.values())
            parts.append(f"{len(self.removed_channels)} layers compacted ({before} -> {after} channels)")
        if self.kept_channels:
            parts.append(f"{len(self.kept_channels)} layers keep zero channels (see kept_channels)")
        if self.sparse_initializers:
            parts.append(f"{len(self.sparse_initializers)} sparse initializers")
        batches = " and ".join(str(b) for b in self.verified_batch_sizes)
        if self.dynamic_batch:
            parts.append("dynamic batch" + (f" (verified at batch {batches})" if batches else ""))
        else:
            parts.append(f"batch fixed at {batches or 'the example size'}")
        if self.max_abs_diff is not None:
            parts.append(f"onnxruntime vs torch: max abs diff {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g})")
        return "; ".join(parts)


# --------------------------------------------------------------------------- sparse initializers
def to_sparse_initializers(model_proto, *, min_elements: int = 16) -> list[str]:
    """Move the sparse floating-point initializers of ``model_proto`` to ``sparse_initializer``.

    An initializer is converted when the COO form (its non-zero values plus one int64
    linear index each) is smaller than the dense one: below ~1/3 density for float32.
    ONNX Runtime densifies them when it loads the model, so inference is unchanged.

    Returns:
        The converted initializers' names; ``model_proto`` is changed in place.
    """
    onnx, _ = require_onnx("to_sparse_initializers()", exporter=False)
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    keep, converted = [], []
    for init in graph.initializer:
        numel = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type not in floating or len(init.dims) == 0 or numel < min_elements:
            keep.append(init)
            continue
        array = numpy_helper.to_array(init)
        flat = array.reshape(-1)
        index = np.flatnonzero(flat)
        if index.size * (array.itemsize + 8) >= numel * array.itemsize:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[index], init.name)
        if init.data_type != values.data_type:  # bfloat16 round-trips through float32 in numpy
            keep.append(init)
            continue
        indices = numpy_helper.from_array(index.astype(np.int64), f"{init.name}__indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(init.dims)))
        converted.append(init.name)
    if converted:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return converted


def densify_sparse_initializers(model_proto) -> None:
    """Turn every ``sparse_initializer`` of ``model_proto`` back into a dense initializer (in place)."""
    from onnx import numpy_helper

    graph = model_proto.graph
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        shape = tuple(int(d) for d in sparse.dims)
        dense = np.zeros(int(np.prod(shape)) if shape else 1, dtype=values.dtype)
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            indices = np.ravel_multi_index(indices.T, shape) if indices.size else indices.reshape(-1)
        dense[indices] = values.reshape(-1)
        graph.initializer.append(numpy_helper.from_array(dense.reshape(shape), sparse.values.name))
    del graph.sparse_initializer[:]


# --------------------------------------------------------------------------- helpers
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: Loggers whose warnings are about an opset conversion that export_onnx() checks itself.
_CONVERTER_LOGGERS = ("onnxscript.version_converter", "torch.onnx._internal.exporter._compat")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines and host-library chatter (not real problems):
    'torchvision is not installed' registry warnings and pytree deprecation warnings.

    Yields the warnings of the opset converter, collected instead of printed: whether
    the requested opset was written is checked on the result, and they explain why not.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    collect = _Collect()
    converters = [logging.getLogger(name) for name in _CONVERTER_LOGGERS]
    saved = [(c.propagate, c.level) for c in converters]
    for c in converters:
        c.addHandler(collect)
        c.propagate = False
        c.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # torch.export's note on every nn.RNN/LSTM/GRU (it refreshes a weight list in forward)
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
            yield collect.records
    finally:
        logger.setLevel(level)
        for c, (propagate, old_level) in zip(converters, saved):
            c.removeHandler(collect)
            c.propagate = propagate
            c.setLevel(old_level)


def _torch_export(model: nn.Module, inputs: tuple, opset_version: int | None, dynamic_batch: bool):
    """``(model_proto, converter warnings)`` from torch.onnx's dynamo exporter."""
    kwargs: dict[str, Any] = dict(dynamo=True, verbose=False, optimize=True, external_data=False)
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    if dynamic_batch:
        batch = torch.export.Dim.DYNAMIC
        kwargs["dynamic_shapes"] = tuple({0: batch} if t.dim() >= 1 else None for t in inputs)
    with _quiet_exporter() as notes:
        program = torch.onnx.export(model, inputs, **kwargs)
        return program.model_proto, list(notes)


def opset_range() -> tuple[int, int, int]:
    """``(lowest, highest, default)`` ``opset_version`` that :func:`export_onnx` accepts here.

    The lowest is torch.onnx's (7); the highest is the newest opset the installed onnx
    package defines (28 with onnx 1.23), the last one its version converter can
    target; the default is what torch.onnx writes for ``opset_version=None`` (20 with
    torch 2.13). The dynamo exporter builds every graph at opset 18 or later and
    converts it to the requested opset: upwards within this range it succeeds, while
    below 18 ONNX's converter lacks adapters for some operators (for a convolution
    with BatchNorm, for instance, nothing below 16), and :func:`export_onnx` then
    raises instead of writing a file of another opset.
    """
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - torch moved its constants
        _constants = None
    lowest = getattr(_constants, "ONNX_MIN_OPSET", 7)
    default = getattr(_constants, "ONNX_DEFAULT_OPSET", 20)
    onnx, _ = require_onnx("opset_range()", exporter=False)
    return lowest, int(onnx.defs.onnx_opset_version()), default


def _check_opset(opset_version: int | None, caller: str) -> None:
    if opset_version is None:
        return
    lowest, highest, default = opset_range()
    if not lowest <= opset_version <= highest:
        raise PruningError(
            f"{caller}: opset_version={opset_version} is not an ONNX opset this installation can write; "
            f"expected an int from {lowest} to {highest} (torch.onnx's lowest to the newest that onnx "
            f"{_onnx_version()} defines; from 18 on no down-conversion is needed), or None for the "
            f"default ({default})."
        )


def _onnx_version() -> str:
    onnx, _ = require_onnx("opset_range()", exporter=False)
    return onnx.__version__


def _opset_mismatch(requested: int, written: int, notes: list[logging.LogRecord], model_name: str,
                    caller: str) -> ExportError:
    reason, cause = "", None
    for record in reversed(notes):  # the converter's failure comes last, with the cause attached
        if record.exc_info and record.exc_info[1] is not None:
            cause = record.exc_info[1]
            reason = f" ONNX's version converter failed: {_first_line(cause)}."
            break
    if requested < 18 <= written:
        hint = ("torch.onnx builds graphs at opset 18 or later and could not convert this one down; pass "
                "opset_version=18 or later (or None), or convert the file with an older exporter.")
    else:
        hint = "pass another opset_version, or None for the exporter's default."
    error = ExportError(
        f"{caller}: opset_version={requested} was asked for, but torch.onnx produced the graph of "
        f"{model_name} at opset {written}.{reason} Nothing was written: {hint}"
    )
    error.__cause__ = cause
    return error


def _session(ort, path: Path, threads: int = 1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run_onnxruntime(session, inputs: tuple) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ExportError(
            f"the ONNX graph has {len(names)} inputs ({', '.join(names)}) but {len(inputs)} example "
            "inputs were given; non-tensor arguments are not supported, bind them in the model."
        )
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
    return session.run(None, feed)


def _fix_ir_version(onnx, model_proto) -> None:
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if model_proto.ir_version <= MAX_IR_VERSION:
        return
    needed = onnx.helper.find_min_ir_version_for(list(model_proto.opset_import))
    if needed > MAX_IR_VERSION:
        raise ExportError(
            f"export_onnx(): opset {opset} needs ONNX IR version {needed}, newer than the IR "
            f"{MAX_IR_VERSION} that onnxruntime 1.31 loads; pass a lower opset_version (e.g. 20)."
        )
    model_proto.ir_version = MAX_IR_VERSION


def _weight_bytes(model_proto) -> int:
    """Bytes of tensor data in the graph (ByteSize() itself fails on messages over 2 GiB)."""
    graph = model_proto.graph
    total = sum(len(t.raw_data) or t.ByteSize() for t in graph.initializer)
    total += sum(len(s.values.raw_data) + len(s.indices.raw_data) for s in graph.sparse_initializer)
    return total


def _check_options(caller, compact, sparse_initializers, verify, overwrite, rtol, dynamic_batch, opset_version):
    for name, value in (("sparse_initializers", sparse_initializers), ("verify", verify),
                        ("overwrite", overwrite), ("dynamic_batch", dynamic_batch)):
        if not isinstance(value, bool):
            raise PruningTypeError(f"{caller}: {name} should be True or False, got {value!r}")
    if compact is not None and not isinstance(compact, bool):
        raise PruningTypeError(
            f"{caller}: compact should be True, False or None (compact when torch-pruning is installed), got {compact!r}"
        )
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise PruningError(f"{caller}: rtol={rtol!r} should be a number in [0, 1), e.g. 1e-4")
    if opset_version is not None and (isinstance(opset_version, bool) or not isinstance(opset_version, int)):
        raise PruningTypeError(f"{caller}: opset_version should be an int such as 20 or None, got {opset_version!r}")


def _has_zero_channels(model: nn.Module) -> bool:
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED) and name:
            w = module.weight.detach()
            rows = w.transpose(0, 1) if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else w
            if rows.reshape(rows.shape[0], -1).ne(0).any(dim=1).logical_not().any():
                return True
    return False


def _resolve_compact(compact: bool | None, model: nn.Module, caller: str) -> bool:
    if compact is not None:
        return compact
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        if _has_zero_channels(model):
            warnings.warn(
                f"{caller}: the model has all-zero output channels but torch-pruning is not "
                "installed, so they are exported as zeros (no speed-up). Install "
                "'synflow-plugin[torch-pruning]' to remove them, or pass compact=False to silence this.",
                stacklevel=3,
            )
        return False
    return True


# --------------------------------------------------------------------------- temporary directories
@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """8 hex digits naming this machine, boot and pid namespace: a pid recorded under
    another tag cannot be checked from here (it may belong to another container)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(read())
        except OSError:
            pass
    return hashlib.sha1("|".join(parts).encode("utf-8", "replace")).hexdigest()[:8]


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}@{_host_tag()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what killed exports to ``path`` left behind; returns the removed directories.

    :func:`export_onnx` writes into a hidden directory ``.<name>.<pid>@<tag>.<random>.tmp``
    beside ``path`` and removes it when it finishes, also on any error; only a killed
    process (SIGKILL, a power cut) leaves one, holding up to a model's size. Every export
    calls this before it writes. A directory is removed only if all of these hold:

    * its name is that of a temporary directory of exactly this ``path`` (another
      file's are never touched) and it is a real directory, not a link, of this user;
    * it holds nothing but regular files named ``<name>`` or ``<name>.data``, what an
      export writes there;
    * its owner is gone: the process id in its name no longer exists on this machine
      (same host, boot and pid namespace, on a system where ``os.kill(pid, 0)`` asks
      without harm); or, where that cannot be checked (another machine, an earlier
      boot, Windows, a name without a pid from an earlier version), nothing in it
      changed for :data:`STALE_AFTER_S` seconds (a day).

    A live export, in this process or another one, is never disturbed. A process id
    reused by an unrelated process keeps its directory until that process ends.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise PruningTypeError(
            f"remove_stale_temporaries(): path should be a str or os.PathLike naming the exported file, "
            f"got {type(path).__name__}"
        )
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)@([0-9a-f]{{8}})\.)?[a-z0-9_]{{8}}\.tmp")
    allowed = {path.name, path.name + ".data"}
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                continue
            newest = info.st_mtime
            contents = list(os.scandir(entry.path))
            if any(c.name not in allowed or not c.is_file(follow_symlinks=False) for c in contents):
                continue
            newest = max([newest] + [c.stat(follow_symlinks=False).st_mtime for c in contents])
        except OSError:
            continue
        pid, tag = match.group(1), match.group(2)
        if pid is not None and tag == _host_tag() and os.name == "posix":
            gone = int(pid) != os.getpid() and not _process_alive(int(pid))
        else:
            gone = now - newest > STALE_AFTER_S
        if gone:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
                _log.info("removed %s, left by an export that did not finish", entry.path)
    return removed


def _fsync(file: Path) -> None:
    """Flush ``file`` to disk, so that a crash after the rename cannot leave it empty."""
    try:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    except OSError:
        pass


def _place(tmp_file: Path, tmp_data: Path | None, path: Path, data_path: Path | None, overwrite: bool, caller: str):
    """Move the checked files into place: the side file first, the model last, so that a
    model file never exists without its data. Without ``overwrite`` each move is a hard
    link, which fails rather than replaces a file that appeared in the meantime (where
    the file system has no hard links, a check just before the rename has to do)."""
    moves = ([(tmp_data, data_path)] if tmp_data is not None and data_path is not None else []) + [(tmp_file, path)]
    placed: list[Path] = []
    try:
        for source, target in moves:
            if not overwrite:
                try:
                    os.link(source, target)
                    placed.append(target)
                    continue
                except FileExistsError:
                    raise PruningError(
                        f"{caller}: '{target}' appeared while exporting; pass overwrite=True to replace it."
                    ) from None
                except OSError:
                    if os.path.lexists(target):
                        raise PruningError(
                            f"{caller}: '{target}' appeared while exporting; pass overwrite=True to replace it."
                        ) from None
            os.replace(source, target)
            placed.append(target)
    except BaseException as exc:
        if not overwrite:  # what this call created, and nothing else
            for target in placed:
                with contextlib.suppress(OSError):
                    os.unlink(target)
        if isinstance(exc, OSError):
            raise ExportError(f"{caller}: cannot move the checked file into place as '{path}': {exc}") from exc
        raise


# --------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    masks: Mapping[str, Mapping[str, Any]] | None = None,
    compact: bool | None = None,
    sparse_initializers: bool = False,
    verify: bool = True,
    rtol: float = 1e-4,
    overwrite: bool = False,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    progress: bool | None = None,
) -> ExportResult:
    """Export a pruned model to one ONNX file that ONNX Runtime runs, and check it.

    The model itself is not changed: masks are made permanent on a copy, which is put
    in eval mode (BatchNorm uses its running statistics) and exported with the dynamo
    exporter of ``torch.onnx``.

    Args:
        model: the pruned network. Masks of ``torch.nn.utils.prune`` (and so of
            ``SynFlow``, ``SNIP``, ...) are taken from the model; NNI masks are passed
            as ``masks``; a model pruned by torch-pruning needs nothing more.
        example_inputs: a tensor or tuple of tensors ``model`` accepts; they fix the
            input shapes (the batch dimension stays dynamic) and serve for verification.
            With batch size 1 the graph is traced on a batch of 2 (the example plus one
            sample), where torch.export would otherwise take the batch for a constant.
        path: the ``.onnx`` file to write; its directory must exist.
        masks: NNI masks ``{module_name: {"weight": mask, "bias": mask_or_None}}``
            (call ``pruner.unwrap_model()`` before exporting).
        compact: remove output channels that are exactly zero (:func:`compact_channels`,
            needs torch-pruning): the way structured pruning turns into speed. ``None``
            (default): compact where possible, when torch-pruning is installed: zero
            channels that cannot be removed (attention heads, layers torch-pruning cannot
            map, a model it cannot trace) are kept and named, with the reason, in one
            :class:`~synflow_plugin.export.CompactionWarning` and in
            ``ExportResult.kept_channels``; the export goes on. ``True``: those are an
            :class:`ExportError` naming each layer. ``False``: no compaction.
        sparse_initializers: store weights that are sparse enough as ONNX
            ``sparse_initializer`` (COO): ~0.3x the file size at 90% sparsity. Speed
            is unchanged: ONNX Runtime densifies them on load.
        verify: run ``onnx.checker`` and compare ONNX Runtime with torch on
            ``example_inputs`` and, with a dynamic batch, on a batch of one more sample
            (the example plus its first sample rolled by one along the last axis); a
            failure or a difference above ``rtol`` at either is an error.
        rtol: allowed ``max|onnxruntime - torch| / max|torch|``.
        overwrite: replace an existing file (refused by default).
        dynamic_batch: make the first dimension of every input dynamic (default), so
            one file serves any batch size (verified at two); False fixes the example's
            shapes. The file's metadata (``synflow_plugin.batch``: ``dynamic`` or
            ``static: <n>``) and :attr:`ExportResult.dynamic_batch` say which.
        opset_version: ONNX opset, an int in :func:`opset_range` (7 to 28 with onnx 1.23); ``None``
            uses the exporter's default (20 with torch 2.13). The file has exactly this
            opset or is not written: torch.onnx builds the graph at opset 18 or later and
            converts it, and where the conversion fails (below 18 it does for some
            operators) torch.onnx would keep the graph at 18 without a word; here that is
            an :class:`ExportError`.
        progress: a tqdm bar over the steps (masks, compaction, export, verification,
            writing); ``None`` (default): only on a terminal.

    Returns:
        An :class:`ExportResult` (path, size, compacted layers, sparse initializers,
        measured difference).

    Raises:
        PruningTypeError: an argument of the wrong type.
        PruningError: a bad path, an existing file without ``overwrite=True``, masks
            that do not fit, an ``opset_version`` outside :func:`opset_range`.
        ExportError: the model cannot be exported, not at the requested opset, fails
            verification (the cause is chained; at the second batch size it names both),
            or, with ``compact=True``, has zero channels that cannot be removed. No file is left behind on any error,
            and the temporary directory a killed export left beside ``path`` is
            removed by the next export to ``path`` (:func:`remove_stale_temporaries`).
        ImportError: onnx, onnxruntime or onnxscript missing (extra ``[onnx]``), or
            torch-pruning missing with ``compact=True``.

    Example:
        >>> import torch, torch.nn as nn, torch.nn.utils.prune as prune, tempfile, os
        >>> from synflow_plugin import SynFlow, prunable_parameters
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> x = torch.randn(1, 16)
        >>> prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow,
        ...                           amount=0.9, model=model, example_inputs=x, iterations=10)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        >>> result = export_onnx(model, x, path, sparse_initializers=True)
        >>> result.max_rel_diff <= 1e-4
        True
    """
    caller = "export_onnx()"
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs, caller)
    path = check_path(path, caller, must_exist=False)
    _check_options(caller, compact, sparse_initializers, verify, overwrite, rtol, dynamic_batch, opset_version)
    refuse_existing(path, overwrite, caller)
    onnx, ort = require_onnx(caller)
    _check_opset(opset_version, caller)
    if progress is not None and not isinstance(progress, bool):
        raise PruningTypeError(f"{caller}: progress should be True, False or None (a terminal only), got {progress!r}")
    if compact is True:
        require_torch_pruning(caller)
    check_nni_unwrapped(model, caller)

    bar = tqdm(total=len(_STAGES), desc=f"export {type(model).__name__}", unit="step", leave=False,
               disable=None if progress is None else not progress)
    try:
        return _export(model, inputs, path, masks, compact, sparse_initializers, verify, rtol, overwrite,
                       dynamic_batch, opset_version, onnx, ort, caller, bar)
    finally:
        bar.close()


_STAGES = ("permanent masks", "compaction", "torch.onnx export", "verification", "writing")


def _stage(bar, k: int) -> None:
    if k:
        bar.update(1)
    bar.set_postfix_str(_STAGES[k], refresh=True)


def _batched(inputs: tuple) -> list[torch.Tensor]:
    return [t for t in inputs if t.dim() >= 1]


def _one_more_sample(inputs: tuple) -> tuple:
    """``inputs`` with one more sample: the first one, rolled by one along its last axis.

    Rolling keeps every value of the example (token ids stay valid ids) but makes the
    new sample differ from the others, so a graph that mixes up samples is caught.
    """
    return tuple(torch.cat([t, t[:1].roll(1, dims=-1)]) if t.dim() >= 1 else t for t in inputs)


def _export(model, inputs, path, masks, compact, sparse_initializers, verify, rtol, overwrite,
            dynamic_batch, opset_version, onnx, ort, caller, bar) -> ExportResult:
    model_name = type(model).__name__
    # 1. permanent masks, on a copy
    _stage(bar, 0)
    plain = make_permanent(model, masks=masks)
    plain.eval()

    def run_torch(args, what):
        try:
            with torch.no_grad():
                return [t.detach().cpu().numpy() for t in output_leaves(plain(*args), caller)]
        except PruningError:
            raise
        except Exception as exc:
            raise ExportError(
                f"{caller}: the {model_name} model does not run on {what} "
                f"({type(exc).__name__}: {_first_line(exc)}); pass inputs model(*example_inputs) accepts"
                + (", or dynamic_batch=False if it takes one batch size only." if what != "example_inputs" else ".")
            ) from exc

    expected = run_torch(inputs, "example_inputs")
    if verify and not all(np.isfinite(e).all() for e in expected if np.issubdtype(e.dtype, np.floating)):
        raise ExportError(
            f"{caller}: the {model_name} model returns NaN or inf on example_inputs, "
            "so the export cannot be verified; check the weights (or pass verify=False)."
        )
    # a dynamic batch is checked at a second batch size; traced at batch 2 rather than 1,
    # where torch.export may treat the batch dimension as the constant 1 inside the graph
    batch = _batched(inputs)[0].shape[0] if _batched(inputs) else None
    checks: list[tuple[tuple, list[np.ndarray]]] = [(inputs, expected)]
    trace_inputs = inputs
    if dynamic_batch and batch is not None:
        more = _one_more_sample(inputs)
        if verify:
            checks.append((more, run_torch(more, f"a batch of {batch + 1} (the example plus one sample)")))
        if all(t.shape[0] == 1 for t in _batched(inputs)):
            trace_inputs = more

    # 2. compaction
    _stage(bar, 1)
    removed: dict[str, tuple[int, int]] = {}
    kept: dict[str, str] = {}
    exported = plain
    if _resolve_compact(compact, plain, caller):
        from synflow_plugin.permanent import copy_model

        exported, kept = _compact(plain, inputs, [], rtol, compact is True, caller, copy_model(plain, caller))
        before, after = channel_counts(plain), channel_counts(exported)
        removed = {n: (before[n], after[n]) for n in before if after.get(n, before[n]) != before[n]}

    # 3. export
    _stage(bar, 2)
    try:
        with torch.no_grad():
            model_proto, notes = _torch_export(exported, trace_inputs, opset_version, dynamic_batch)
    except Exception as exc:
        hint = " (or pass dynamic_batch=False if the model fixes its batch size)" if dynamic_batch else ""
        if "cache_utils" in str(exc) or "Cache'>" in str(exc):
            hint += ("; a Hugging Face model that returns its key/value cache cannot be exported: "
                     "build it with use_cache=False")
        raise ExportError(
            f"{caller}: the {model_name} model could not be exported to ONNX by torch.onnx "
            f"(dynamo exporter): {type(exc).__name__}: {_first_line(exc)}. The model must be traceable "
            f"by torch.export: no data-dependent Python control flow, only tensor inputs{hint}. "
            "The full error is chained below."
        ) from exc
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset_version is not None and opset != opset_version:
        raise _opset_mismatch(opset_version, opset, notes, model_name, caller)
    for note in notes:  # a node left at its old version under the new opset stamp
        if note.name.endswith("._version_converter"):
            warnings.warn(f"{caller}: converting to opset {opset}: {note.getMessage()}", UserWarning, stacklevel=3)
    _fix_ir_version(onnx, model_proto)
    sparse_names = to_sparse_initializers(model_proto) if sparse_initializers else []
    verified = tuple(int(_batched(args)[0].shape[0]) for args, _ in checks) if verify and batch is not None else ()
    _set_metadata(onnx, model_proto, {
        "synflow_plugin.batch": "dynamic" if dynamic_batch and batch is not None else
                                f"static: {batch}" if batch is not None else "none",
        "synflow_plugin.verified_batch_sizes": ",".join(str(b) for b in verified),
    })

    # 4. write into a private directory beside `path`, check, rename into place
    ir_version = model_proto.ir_version
    external = _weight_bytes(model_proto) >= SINGLE_FILE_LIMIT
    data_path = path.with_name(path.name + ".data") if external else None
    if external:
        refuse_existing(data_path, overwrite, caller)
    remove_stale_temporaries(path)
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise PruningError(f"{caller}: cannot write into '{path.parent}': {exc}") from exc
    try:
        tmp_file = tmp_dir / path.name
        try:
            if external:
                onnx.save_model(model_proto, str(tmp_file), save_as_external_data=True,
                                all_tensors_to_one_file=True, location=data_path.name, size_threshold=1024)
            else:
                tmp_file.write_bytes(model_proto.SerializeToString())
        except (OSError, ValueError) as exc:
            raise ExportError(f"{caller}: cannot write '{path}': {exc}") from exc
        if external and not (tmp_dir / data_path.name).exists():  # every tensor was small
            external, data_path = False, None
        for written in [tmp_file] + ([tmp_dir / data_path.name] if external else []):
            _fsync(written)
        del model_proto
        diff = rel = None
        _stage(bar, 3)
        if verify:
            diff, rel = _verify(onnx, ort, tmp_file, checks, rtol, caller, model_name)
        _stage(bar, 4)
        size = tmp_file.stat().st_size + ((tmp_dir / data_path.name).stat().st_size if external else 0)
        _place(tmp_file, tmp_dir / data_path.name if external else None, path, data_path, overwrite, caller)
        bar.update(1)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExportResult(
        path=path, file_bytes=size, opset=opset, ir_version=ir_version, external_data=data_path,
        removed_channels=removed, sparse_initializers=sparse_names, max_abs_diff=diff, max_rel_diff=rel,
        kept_channels=kept, dynamic_batch=bool(dynamic_batch and batch is not None), verified_batch_sizes=verified,
    )


def _set_metadata(onnx, model_proto, entries: dict[str, str]) -> None:
    for key, value in entries.items():
        for prop in model_proto.metadata_props:
            if prop.key == key:
                prop.value = value
                break
        else:
            model_proto.metadata_props.add(key=key, value=value)


def _verify(onnx, ort, file: Path, checks, rtol, caller, model_name) -> tuple[float, float]:
    """``onnx.checker``, then ONNX Runtime vs torch on every ``(inputs, expected)`` of ``checks``."""
    try:
        onnx.checker.check_model(str(file))
    except Exception as exc:
        raise ExportError(f"{caller}: the exported graph of {model_name} fails onnx.checker: {_first_line(exc)}") from exc
    try:
        session = _session(ort, file)
    except Exception as exc:
        raise ExportError(
            f"{caller}: onnxruntime {ort.__version__} cannot load the exported {model_name}: {_first_line(exc)}"
        ) from exc
    diff = rel = 0.0
    for k, (inputs, expected) in enumerate(checks):
        batch = next((int(t.shape[0]) for t in inputs if t.dim() >= 1), None)
        where = "" if k == 0 else f" at batch {batch} (the example has {int(_batched(checks[0][0])[0].shape[0])})"
        fix = ("" if k == 0 else
               " The graph fixes the batch size somewhere although the batch dimension was declared dynamic."
               " Pass dynamic_batch=False to export a file for the example's batch size "
               "only (its metadata says so), or change the model so that no operation depends on the batch size.")
        try:
            actual = _run_onnxruntime(session, inputs)
        except PruningError:
            raise
        except Exception as exc:
            raise ExportError(
                f"{caller}: onnxruntime {ort.__version__} cannot run the exported {model_name}{where}: "
                f"{_first_line(exc)}. Nothing was written.{fix}"
            ) from exc
        if len(actual) != len(expected):
            raise ExportError(
                f"{caller}: the ONNX model of {model_name} returns {len(actual)} outputs, torch {len(expected)}."
            )
        d, r = relative_difference(actual, expected)
        if not r <= rtol:
            raise ExportError(
                f"{caller}: onnxruntime and torch disagree on the exported {model_name}{where}: max abs difference "
                f"{d:.3g}, relative {r:.3g} > rtol={rtol:g}. Nothing was written."
                + (fix if k else " Pass a larger rtol if this is float rounding, or verify=False to skip the check.")
            )
        diff, rel = max(diff, d), max(rel, r)
    return diff, rel

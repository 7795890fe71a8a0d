"""synflow_plugin.export: permanent masks, compaction, ONNX export, benchmark.

Small models only: every export takes about a second on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import PruningError, PruningTypeError, SynFlow, prunable_parameters
from synflow_plugin.export import (
    CompactionWarning,
    ExportError,
    benchmark_onnx,
    channel_counts,
    compact_channels,
    count_macs,
    densify_sparse_initializers,
    export_onnx,
    find_zero_channels,
    make_permanent,
    to_sparse_initializers,
)
from synflow_plugin.export import onnx_export
from synflow_plugin.models import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def ort_run(path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})


def eval_output(model, x):
    model = make_permanent(model).eval()
    with torch.no_grad():
        return model(x).numpy()


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))


# --------------------------------------------------------------------------- optional deps
def test_import_without_optional_hosts_and_clear_error():
    code = textwrap.dedent(
        """
        import sys
        for name in ("onnx", "onnxruntime", "onnxscript", "torch_pruning"):
            sys.modules[name] = None
        import torch
        import synflow_plugin.export as ex
        try:
            ex.export_onnx(torch.nn.Linear(2, 2), torch.randn(1, 2), "m.onnx")
        except ImportError as exc:
            print("ERR", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR export_onnx() needs the 'onnx' package" in out.stdout
    assert "synflow-plugin[onnx]" in out.stdout


def test_compact_true_without_torch_pruning_is_an_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"synflow-plugin\[torch-pruning\]"):
        export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "m.onnx", compact=True)
    assert list(tmp_path.iterdir()) == []


def test_default_compact_warns_about_zero_channels_without_torch_pruning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model = tiny_mlp()
    with torch.no_grad():
        model[0].weight[1] = 0
    with pytest.warns(UserWarning, match="all-zero output channels"):
        result = export_onnx(model, torch.randn(1, 8), tmp_path / "m.onnx")
    assert result.removed_channels == {}


# --------------------------------------------------------------------------- permanent masks
def test_make_permanent_torch_prune_on_a_copy():
    model = tiny_mlp()
    mask = torch.tensor([[1, 0] * 4, [0, 1] * 4, [1] * 8, [0] * 8], dtype=torch.float32)
    prune.custom_from_mask(model[0], "weight", mask)
    orig = model[0].weight_orig.detach().clone()
    plain = make_permanent(model)
    assert "weight_orig" not in dict(plain[0].named_parameters())
    assert not plain[0]._forward_pre_hooks
    assert torch.equal(plain[0].weight, orig * mask)
    assert isinstance(plain[0].weight, nn.Parameter)
    # the user's model still has its mask
    assert hasattr(model[0], "weight_mask") and len(model[0]._forward_pre_hooks) == 1
    assert torch.equal(model[0].weight_orig, orig)


def test_make_permanent_nni_masks_and_torch_prune_together():
    model = tiny_mlp()
    prune.l1_unstructured(model[2], "weight", amount=6)
    masks = {"0": {"weight": torch.tensor([[1.0] * 8, [0.0] * 8, [1.0] * 8, [1.0] * 8]),
                   "bias": torch.tensor([1.0, 0.0, 1.0, 1.0])},
             "2": {"weight": torch.ones(3, 4), "bias": None}}
    plain = make_permanent(model, masks=masks)
    assert int((plain[0].weight == 0).sum()) == 8 and plain[0].bias[1] == 0
    assert int((plain[2].weight == 0).sum()) == 6
    assert int((model[0].weight == 0).sum()) == 0  # not changed


def test_make_permanent_inplace():
    model = tiny_mlp()
    prune.l1_unstructured(model[0], "weight", amount=10)
    assert make_permanent(model, inplace=True) is model
    assert not hasattr(model[0], "weight_orig") and int((model[0].weight == 0).sum()) == 10


@pytest.mark.parametrize(
    "masks, error, match",
    [
        ({"fc": {"weight": torch.ones(4, 8)}}, PruningError, "does not have"),
        ({"0": {"kernel": torch.ones(4, 8)}}, PruningError, r"its parameters: bias, weight"),
        ({"0": {"weight": torch.ones(3, 3)}}, PruningError, r"shape \(3, 3\).*\(4, 8\)"),
        ({"0": {"weight": [1, 0]}}, PruningTypeError, "torch.Tensor"),
        ([("0", None)], PruningTypeError, "should be a dict"),
    ],
)
def test_bad_masks_are_refused_before_any_change(masks, error, match):
    model = tiny_mlp()
    prune.l1_unstructured(model[0], "weight", amount=4)
    good = {"2": {"weight": torch.zeros(3, 4)}}
    with pytest.raises(error, match=match):
        make_permanent(model, masks={**good, **masks} if isinstance(masks, dict) else masks, inplace=True)
    assert hasattr(model[0], "weight_orig")  # the prune hook was not removed
    assert int((model[2].weight == 0).sum()) == 0  # the good mask was not applied


def test_nni_wrapped_model_is_refused(tmp_path):
    model = tiny_mlp()
    model[0]._nni_wrapper = nn.Identity()  # what NNI's ModuleWrapper leaves on a wrapped module
    with pytest.raises(ExportError, match=r"pruner.unwrap_model\(\)"):
        export_onnx(model, torch.randn(1, 8), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="'0' has an _nni_wrapper"):
        make_permanent(model)


# --------------------------------------------------------------------------- compaction
def test_compaction_on_a_residual_net():
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = create_model("resnet20", width_multiplier=0.25)  # 4 / 8 / 16 channels
    with torch.no_grad():
        model.stages[0][0].conv1.weight[1] = 0  # inside a block: removable alone
        model.conv1.weight[2] = 0  # residual channel 2: zero in the stem and every conv2 of stage 0
        for block in model.stages[0]:
            block.conv2.weight[2] = 0
        model.conv1.weight[3] = 0  # residual channel 3: zero only in the stem -> kept
        model.fc.weight[0] = 0  # the classifier is never compacted
        model.fc.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v for k, v in channel_counts(model).items()}
    assert find_zero_channels(model, x) == {"conv1": [2], "stages.0.0.conv1": [1]}
    small = compact_channels(model, x)
    after = channel_counts(small)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {
        "conv1": (4, 3), "stages.0.0.conv1": (4, 3),
        "stages.0.0.conv2": (4, 3), "stages.0.1.conv2": (4, 3), "stages.0.2.conv2": (4, 3),
    }
    assert small.stages[1][0].conv1.in_channels == 3 and small.stages[1][0].shortcut[0].in_channels == 3
    assert small.fc.out_features == 10
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)
    assert channel_counts(model) == before  # the user's model is unchanged


def vgg_bn_tiny():
    torch.manual_seed(0)
    return create_model("vgg11_bn", width_multiplier=1 / 16, input_shape=(3, 16, 16))


def test_compaction_keeps_a_channel_that_batchnorm_makes_nonzero():
    pytest.importorskip("torch_pruning")
    model = vgg_bn_tiny()
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        conv.weight[:2] = 0
        conv.bias[:2] = 0
        bn.bias[0] = 0.5  # channel 0 is the constant relu(0.5) after BN: not removable exactly
    x = torch.randn(2, 3, 16, 16)
    small = compact_channels(model, x)
    assert small.features[0].out_channels == 3  # of 4: only channel 1 removed
    assert torch.equal(small.features[1].bias, bn.bias[[0, 2, 3]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)


def test_compaction_keeps_channels_turned_nonzero_between_layers():
    pytest.importorskip("torch_pruning")

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = torch.sigmoid(self.a(x))  # sigmoid(0) = 0.5: a zero channel does not stay zero
            return self.fc(self.b(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Gate()
    with torch.no_grad():
        model.a.weight[0] = 0
        model.a.bias[0] = 0
        model.b.weight[1] = 0
        model.b.bias[1] = 0
    x = torch.randn(2, 3, 8, 8)
    small = compact_channels(model, x)
    assert (small.a.out_channels, small.b.out_channels, small.fc.in_features) == (4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)


def test_compaction_keeps_one_channel_of_an_all_zero_layer():
    pytest.importorskip("torch_pruning")
    model = tiny_mlp()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    small = compact_channels(model, torch.randn(3, 8))
    assert small[0].out_features == 1 and small[2].in_features == 1


# --------------------------------------------------------------------------- export + parity
FAMILIES = {
    "vgg11_bn": dict(width_multiplier=1 / 16, input_shape=(3, 16, 16)),
    "resnet20": dict(width_multiplier=0.25, input_shape=(3, 8, 8)),
    "resnet18": dict(width_multiplier=1 / 16, input_shape=(3, 8, 8)),
    "mlp": dict(input_shape=(1, 8, 8), width=16, depth=3),
    "conv": dict(input_shape=(1, 40), width=8),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_parity_for_each_zoo_family(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **FAMILIES[name])
    x = torch.randn(2, *model.input_shape)
    prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=0.9,
                              model=model, example_inputs=x, iterations=3, progress=False)
    result = export_onnx(model, x, tmp_path / f"{name}.onnx")
    assert result.max_rel_diff <= 1e-4
    assert result.ir_version <= 10 and result.opset >= 18
    assert sorted(os.listdir(tmp_path)) == [f"{name}.onnx"]  # one file, no side files
    # another batch size: the batch dimension is dynamic
    x3 = torch.randn(3, *model.input_shape)
    (out,) = ort_run(result.path, x3)
    expected = eval_output(model, x3)
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()


def test_structured_masks_become_a_smaller_model(tmp_path):
    pytest.importorskip("torch_pruning")
    model = vgg_bn_tiny()
    for module, name in prunable_parameters(model)[:-1]:
        prune.ln_structured(module, name, amount=0.5, n=1, dim=0)
    x = torch.randn(1, 3, 16, 16)
    result = export_onnx(model, x, tmp_path / "m.onnx")
    convs = {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    assert set(result.removed_channels) == convs
    assert all(after == before // 2 for before, after in result.removed_channels.values())
    loaded = onnx.load(str(result.path))
    conv_weights = [i for i in loaded.graph.initializer if len(i.dims) == 4]
    assert conv_weights[0].dims[0] == 2  # 4 channels -> 2
    (out,) = ort_run(result.path, x)
    np.testing.assert_allclose(out, eval_output(model, x), atol=1e-5)


def test_sparse_initializers_are_smaller_and_give_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(4, 64)
    prune.global_unstructured(prunable_parameters(model), pruning_method=prune.L1Unstructured, amount=0.9)
    dense = export_onnx(model, x, tmp_path / "dense.onnx", compact=False)
    sparse = export_onnx(model, x, tmp_path / "sparse.onnx", compact=False, sparse_initializers=True)
    assert sorted(sparse.sparse_initializers) == ["0.weight", "2.weight"]
    assert sparse.file_bytes < 0.45 * dense.file_bytes
    loaded = onnx.load(str(sparse.path))
    assert len(loaded.graph.sparse_initializer) == 2
    assert {s.values.name for s in loaded.graph.sparse_initializer} == {"0.weight", "2.weight"}
    np.testing.assert_array_equal(ort_run(sparse.path, x)[0], ort_run(dense.path, x)[0])
    assert sparse.max_rel_diff <= 1e-4


def test_sparse_initializer_round_trip_by_hand():
    from onnx import helper, numpy_helper

    weight = np.zeros((4, 8), dtype=np.float32)
    weight[0, 1], weight[3, 7] = 1.5, -2.0
    dense_small = np.ones((4, 8), dtype=np.float32)  # dense: COO would be larger, stays
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "d"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(dense_small[:1], "d")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    assert to_sparse_initializers(model, min_elements=1) == ["w"]
    (sparse,) = model.graph.sparse_initializer
    assert numpy_helper.to_array(sparse.indices).tolist() == [1, 31]  # linear COO indices
    assert numpy_helper.to_array(sparse.values).tolist() == [1.5, -2.0]
    assert [i.name for i in model.graph.initializer] == ["d"]
    onnx.checker.check_model(model)
    x = np.arange(4, dtype=np.float32)[None]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x @ weight + 1)
    densify_sparse_initializers(model)
    assert not model.graph.sparse_initializer
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[-1]), weight)


def test_large_models_get_one_side_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 0)  # pretend the model is over 2 GB
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))  # a 2 KB tensor goes out
    result = export_onnx(model, torch.randn(1, 64), tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert result.file_bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    (out,) = ort_run(result.path, torch.ones(2, 64))
    np.testing.assert_allclose(out, eval_output(model, torch.ones(2, 64)), atol=1e-5)
    assert result.external_data == tmp_path / "m.onnx.data" and result.max_rel_diff <= 1e-4


# --------------------------------------------------------------------------- writing
def test_atomic_write_and_overwrite_refusal(tmp_path):
    path = tmp_path / "m.onnx"
    x = torch.randn(1, 8)
    first = export_onnx(tiny_mlp(), x, path)
    content = path.read_bytes()
    assert first.file_bytes == len(content)
    other = nn.Sequential(nn.Linear(8, 3))
    with pytest.raises(PruningError, match="already exists; pass overwrite=True"):
        export_onnx(other, x, path)
    assert path.read_bytes() == content
    export_onnx(other, x, path, overwrite=True)
    assert path.read_bytes() != content
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary files left


def test_failed_verification_leaves_no_file(tmp_path):
    path = tmp_path / "m.onnx"
    real = onnx_export._run_onnxruntime
    with mock.patch.object(onnx_export, "_run_onnxruntime", side_effect=lambda s, i: [o + 1e-2 for o in real(s, i)]):
        with pytest.raises(ExportError, match=r"onnxruntime and torch disagree.*rtol=0.0001"):
            export_onnx(tiny_mlp(), torch.randn(1, 8), path)
    assert os.listdir(tmp_path) == []


def test_failed_verification_does_not_touch_an_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with mock.patch.object(onnx_export, "_verify", side_effect=ExportError("boom")):
        with pytest.raises(ExportError, match="boom"):
            export_onnx(tiny_mlp(), torch.randn(1, 8), path, overwrite=True)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def dead_pid() -> int:
    """The id of a process that has ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(directory, name, pid=None, tag=None, age_s=0.0, files=("m.onnx",)):
    """A temporary directory as a killed export leaves it (pid=None: the older unnamed form)."""
    owner = "" if pid is None else f"{pid}@{tag or onnx_export._host_tag()}."
    tmp = directory / f".{name}.{owner}abcd_123.tmp"
    tmp.mkdir()
    for file in files:
        (tmp / file).write_bytes(b"\0" * 64)
    if age_s:
        then = os.path.getmtime(tmp) - age_s
        for p in [*tmp.iterdir(), tmp]:
            os.utime(p, (then, then))
    return tmp


def test_a_later_export_removes_what_a_killed_export_left_and_nothing_else(tmp_path):
    day = onnx_export.STALE_AFTER_S
    dead, foreign = dead_pid(), "0123abcd" if onnx_export._host_tag() != "0123abcd" else "abcd0123"
    (tmp_path / "old").mkdir(), (tmp_path / "fresh").mkdir()
    stale = [
        leftover(tmp_path, "m.onnx", pid=dead, files=("m.onnx", "m.onnx.data")),  # killed here
        leftover(tmp_path / "old", "m.onnx", pid=os.getpid(), tag=foreign, age_s=2 * day),  # another machine
        leftover(tmp_path / "old", "m.onnx", age_s=2 * day),  # an earlier version's name, untouched a day
    ]
    kept = [
        leftover(tmp_path / "fresh", "m.onnx", pid=os.getpid()),  # a live export (this process)
        leftover(tmp_path / "fresh", "m.onnx", pid=dead, tag=foreign),  # another machine's, recent
        leftover(tmp_path / "fresh", "m.onnx"),  # unnamed, recent
        leftover(tmp_path, "other.onnx", pid=dead),  # another target's
        leftover(tmp_path, "m.onnx.bak", pid=dead),  # a name that only starts like it
        leftover(tmp_path / "old", "m.onnx", pid=dead, tag=foreign, age_s=2 * day, files=("notes.txt",)),
    ]
    symlink = tmp_path / f".m.onnx.{dead}@{onnx_export._host_tag()}.zzzzzzzz.tmp"
    symlink.symlink_to(tmp_path / "old")  # a link is never followed
    assert kept[0].name.startswith(onnx_export._temporary_prefix(tmp_path / "m.onnx"))

    result = export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "m.onnx")
    assert result.path.is_file()
    assert not stale[0].exists() and stale[0].parent.is_dir()
    assert sorted(onnx_export.remove_stale_temporaries(tmp_path / "old" / "m.onnx")) == sorted(stale[1:])
    for directory in (tmp_path / "fresh", tmp_path / "old"):
        assert onnx_export.remove_stale_temporaries(directory / "m.onnx") == []
    assert all(k.is_dir() and any(k.iterdir()) for k in kept)
    assert symlink.is_symlink() and (tmp_path / "old").is_dir()


def test_the_directory_of_a_sigkilled_export_is_removed_by_the_next_one(tmp_path):
    code = textwrap.dedent(
        f"""
        import time, torch
        from onnx import TensorProto, helper
        from synflow_plugin.export import export_onnx, onnx_export
        def hang(*args, **kwargs):
            print("WRITTEN", flush=True)
            time.sleep(600)
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
        onnx_export._torch_export = lambda *args: (proto, [])  # the file's content does not matter here
        onnx_export._verify = hang
        export_onnx(torch.nn.Identity(), torch.randn(1, 8), {str(tmp_path / "m.onnx")!r}, compact=False)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "WRITTEN"
        (left,) = tmp_path.iterdir()  # written, checked next: the moment a kill leaves it behind
        assert left.name.startswith(f".m.onnx.{child.pid}@") and (left / "m.onnx").is_file()
    finally:
        child.kill()
        child.wait(timeout=60)
    export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("where", ["torch.onnx.export", "write", "verify", "place", "interrupt"])
def test_a_failing_export_leaves_no_temporary_directory_and_no_file(tmp_path, where):
    path = tmp_path / "m.onnx"
    boom = RuntimeError("injected")
    patches = {
        "torch.onnx.export": mock.patch.object(torch.onnx, "export", side_effect=boom),
        "write": mock.patch.object(onnx_export.Path, "write_bytes", side_effect=OSError(28, "No space left")),
        "verify": mock.patch.object(onnx_export, "_verify", side_effect=ExportError("verification failed")),
        "place": mock.patch.multiple(os, link=mock.DEFAULT, replace=mock.DEFAULT),
        "interrupt": mock.patch.object(onnx_export, "_verify", side_effect=KeyboardInterrupt),
    }
    with patches[where] as patched:
        if where == "place":
            for fn in patched.values():
                fn.side_effect = OSError(5, "Input/output error")
        expected = KeyboardInterrupt if where == "interrupt" else ExportError
        with pytest.raises(expected) as info:
            export_onnx(tiny_mlp(), torch.randn(1, 8), path, compact=False)
    if where == "torch.onnx.export":
        assert info.value.__cause__ is boom and "could not be exported" in str(info.value)
    if where in ("write", "place"):
        assert isinstance(info.value.__cause__, OSError) and str(path) in str(info.value)
    assert os.listdir(tmp_path) == []


def test_opset_version_out_of_range_is_refused_before_export(tmp_path):
    lowest, highest, default = onnx_export.opset_range()
    assert lowest <= 18 <= default <= highest == onnx.defs.onnx_opset_version()
    with mock.patch.object(torch.onnx, "export") as exporter:
        for bad in (99, highest + 1, lowest - 1, 0):
            with pytest.raises(PruningError, match=rf"opset_version={bad} .*from {lowest} to {highest}"):
                export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "m.onnx", opset_version=bad)
        with pytest.raises(PruningTypeError, match="opset_version should be an int"):
            export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "m.onnx", opset_version=20.0)
    exporter.assert_not_called()
    assert os.listdir(tmp_path) == []


def test_the_written_opset_is_the_requested_one_or_nothing_is_written(tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(1, 2, 4, 4)
    for opset in (17, 22):  # down-converted from 18, and up-converted
        result = export_onnx(model, x, tmp_path / f"m{opset}.onnx", opset_version=opset, compact=False)
        written = onnx.load(str(result.path))
        assert result.opset == opset
        assert [o.version for o in written.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    # ONNX's converter has no adapter to take BatchNorm's graph below 16: torch.onnx keeps it at 18
    with pytest.raises(ExportError, match=r"opset_version=13 was asked for, but .* at opset 18\. ONNX's "
                                          r"version converter failed: .*opset_version=18 or later") as info:
        export_onnx(model, x, tmp_path / "m13.onnx", opset_version=13, compact=False)
    assert info.value.__cause__ is not None
    assert sorted(os.listdir(tmp_path)) == ["m17.onnx", "m22.onnx"]


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: not traceable
            return self.fc(x)
        return -self.fc(x)


def test_unexportable_model_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="could not be exported to ONNX") as info:
        export_onnx(DataDependent(), torch.ones(1, 4), tmp_path / "m.onnx", compact=False)
    assert info.value.__cause__ is not None
    assert len(str(info.value)) < 1200
    assert os.listdir(tmp_path) == []


def test_model_that_does_not_run_on_the_inputs(tmp_path):
    with pytest.raises(ExportError, match=r"does not run on example_inputs \(RuntimeError"):
        export_onnx(tiny_mlp(), torch.randn(1, 5), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(path="MISSING_DIR/m.onnx"), PruningError, "does not exist"),
        (dict(path="DIR"), PruningError, "is a directory"),
        (dict(path=3), PruningTypeError, "str or os.PathLike"),
        (dict(example_inputs=[1, 2]), PruningTypeError, "example_inputs should be a torch.Tensor"),
        (dict(model="net"), PruningTypeError, "model should be a torch.nn.Module"),
        (dict(rtol=-1.0), PruningError, r"rtol=-1.0 should be a number in \[0, 1\)"),
        (dict(compact="yes"), PruningTypeError, "compact should be True, False or None"),
        (dict(sparse_initializers=1), PruningTypeError, "sparse_initializers should be True or False"),
        (dict(progress="yes"), PruningTypeError, "progress should be True, False or None"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    args = dict(model=tiny_mlp(), example_inputs=torch.randn(1, 8), path=tmp_path / "m.onnx")
    args.update(kwargs)
    if args["path"] == "MISSING_DIR/m.onnx":
        args["path"] = tmp_path / "missing" / "m.onnx"
    elif args["path"] == "DIR":
        args["path"] = tmp_path
    with pytest.raises(error, match=match):
        export_onnx(args.pop("model"), args.pop("example_inputs"), args.pop("path"), **args)
    assert [p for p in tmp_path.iterdir()] == []


# --------------------------------------------------------------------------- compact where possible
class GRUNet(nn.Module):
    """A Linear feeding a GRU: torch-pruning's index mapping fails on its channels (IndexError)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.rnn = nn.GRU(8, 12, batch_first=True)
        self.mid = nn.Linear(12, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x):
        h = self.rnn(torch.relu(self.inp(x)))[0][:, -1]
        return self.out(torch.relu(self.mid(h)))


def gru_net_with_zero_channels():
    torch.manual_seed(0)
    model = GRUNet()
    with torch.no_grad():
        for layer in (model.inp, model.mid):
            layer.weight[:4] = 0
            layer.bias[:4] = 0
    return model


def test_compaction_keeps_and_names_what_torch_pruning_cannot_map():
    pytest.importorskip("torch_pruning")
    model, x = gru_net_with_zero_channels(), torch.randn(2, 5, 6)
    with pytest.warns(CompactionWarning, match=r"'inp': 4 zero output channel\(s\): torch-pruning cannot map "
                                               r"the channels of 'inp' \(Linear\).*IndexError") as caught:
        small = compact_channels(model, x, strict=False)
    (warning,) = [w.message for w in caught if isinstance(w.message, CompactionWarning)]
    assert set(warning.kept) == {"inp"}
    # what can be compacted still is: mid loses its 4 zero channels, inp keeps all 8
    assert channel_counts(small) == {"inp": 8, "mid": 6, "out": 3}
    with torch.no_grad():
        torch.testing.assert_close(small(x), make_permanent(model).eval()(x), rtol=0, atol=1e-6)
    # explicitly asked: an error that names the layer, and nothing changed
    with pytest.raises(ExportError, match=r"(?s)compact=True, but 1 layer\(s\) of GRUNet have all-zero channels "
                                          r"that cannot be removed:.*'inp': 4 zero output channel\(s\).*IndexError.*"
                                          r"Pass compact=None"):
        compact_channels(model, x)


def test_export_compacts_where_possible_and_compact_true_refuses(tmp_path):
    pytest.importorskip("torch_pruning")
    model, x = gru_net_with_zero_channels(), torch.randn(1, 5, 6)
    with pytest.raises(ExportError, match=r"(?s)export_onnx\(\): compact=True, but 1 layer\(s\) of GRUNet.*'inp'.*"
                                          r"torch-pruning cannot map"):
        export_onnx(model, x, tmp_path / "strict.onnx", compact=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(CompactionWarning, match="'inp'"):
        result = export_onnx(model, x, tmp_path / "m.onnx")
    assert result.removed_channels == {"mid": (10, 6)}
    assert set(result.kept_channels) == {"inp"} and "IndexError" in result.kept_channels["inp"]
    assert result.max_rel_diff <= 1e-4 and result.verified_batch_sizes == (1, 2)


class Untraceable(nn.Module):
    """Its output carries no autograd history, which torch-pruning needs to trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        with torch.no_grad():
            return self.b(torch.relu(self.a(x)))


def test_a_model_torch_pruning_cannot_trace_is_exported_uncompacted_with_a_warning():
    pytest.importorskip("torch_pruning")
    model = Untraceable()
    with torch.no_grad():
        model.a.weight[:3] = 0
        model.a.bias[:3] = 0
    x = torch.randn(2, 4)
    with pytest.warns(CompactionWarning, match="Untraceable is exported without compaction: .*could not trace"):
        same = compact_channels(model, x, strict=False)
    assert channel_counts(same) == {"a": 6, "b": 2}
    with pytest.raises(ExportError, match="could not trace the Untraceable model"):
        compact_channels(model, x)


def test_a_removal_that_changes_the_outputs_is_undone_and_named():
    pytest.importorskip("torch_pruning")
    from synflow_plugin.export import compact as compact_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[:2] = 0
        model[2].weight[:2] = 0
        model[2].bias[:2] = 0
    x = torch.randn(3, 4)
    real = compact_module._check
    calls = []

    def check(work, *args):  # the one-layer-at-a-time pass sees layer '2' break the model
        calls.append(work[2].out_features)
        if work[2].out_features < 5:
            return "the model no longer runs without them (RuntimeError: injected)"
        return real(work, *args)

    with mock.patch.object(compact_module, "_check", side_effect=check):
        with pytest.warns(CompactionWarning, match=r"'2': 2 zero output channel\(s\): .*injected"):
            small = compact_channels(model, x, strict=False)
    assert channel_counts(small) == {"0": 4, "2": 5, "4": 2}  # '0' compacted, '2' restored
    assert small[2].weight.shape == (5, 4)  # its inputs follow layer '0', its outputs are back
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- batch axis
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 1)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)).mean(dim=1))


def test_the_second_batch_size_catches_a_graph_that_fixes_the_batch(tmp_path, monkeypatch):
    # torch.export traces a TransformerEncoder at batch 1 into a graph that only runs at
    # batch 1 (a Reshape to {5, 16}); export_onnx traces at batch 2, so force batch 1 here
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(1, 5, 6)
    real = onnx_export._torch_export
    monkeypatch.setattr(onnx_export, "_torch_export",
                        lambda m, inputs, *args: real(m, tuple(t[:1] for t in inputs), *args))
    with pytest.raises(ExportError, match=r"cannot run the exported Encoder at batch 2 \(the example has 1\).*"
                                          r"Nothing was written.*dynamic_batch=False"):
        export_onnx(model, x, tmp_path / "m.onnx", compact=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    result = export_onnx(model, x, tmp_path / "m.onnx", compact=False)
    assert result.verified_batch_sizes == (1, 2)
    x4 = torch.randn(4, 5, 6)
    (out,) = ort_run(result.path, x4)
    np.testing.assert_allclose(out, eval_output(model, x4), atol=1e-5)


def test_benchmark_turns_an_onnxruntime_failure_into_an_export_error(tmp_path):
    # the file a plain torch.onnx.export of a batch-1 TransformerEncoder writes: dynamic
    # batch declared, batch 1 fixed inside
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(1, 5, 6)
    path = tmp_path / "plain.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notes
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    program.save(str(path))
    report = benchmark_onnx(path, batch_sizes=1, warmup=0, repeat=1, verbose=False, progress=False)
    assert report.models[0]["latency"]["1"]["p50_ms"] > 0  # batch 1 runs
    with pytest.raises(ExportError, match=r"cannot run 'plain' \(plain.onnx\) at batch size 4 \(inputs .* \[4, 5, 6\]\)"
                                          r".*Export it again with synflow_plugin.export.export_onnx\(\)"):
        benchmark_onnx(path, batch_sizes=(1, 4), warmup=0, repeat=1, verbose=False, progress=False)


def test_a_static_batch_is_recorded_in_the_file_and_progress_shows_on_request(tmp_path, capsys):
    result = export_onnx(tiny_mlp(), torch.randn(2, 8), tmp_path / "m.onnx", dynamic_batch=False,
                         compact=False, progress=True)
    err = capsys.readouterr().err
    assert "export Sequential" in err and "/5 " in err and "writing" in err  # masks, compaction, export, ...
    metadata = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert metadata == {"synflow_plugin.batch": "static: 2", "synflow_plugin.verified_batch_sizes": "2"}
    assert not result.dynamic_batch and result.verified_batch_sizes == (2,)
    assert "batch fixed at 2" in str(result)
    report = benchmark_onnx(result.path, batch_sizes=(1, 2), warmup=0, repeat=1, verbose=False, progress=False)
    assert report.models[0]["latency"]["1"] is None and report.models[0]["latency"]["2"]["p50_ms"] > 0
    export_onnx(tiny_mlp(), torch.randn(1, 8), tmp_path / "quiet.onnx", compact=False)  # not a terminal
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- benchmark
class MatMuls(nn.Module):
    """A MatMul with a constant operand and a MatMul of two activations, as in attention."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):  # x: (batch, 5, 4)
        q = x @ self.w  # (batch, 5, 3)
        return q @ q.transpose(1, 2)  # (batch, 5, 5)


def test_matmul_macs_by_hand(tmp_path):
    model = MatMuls()
    with torch.no_grad():
        model.w[0] = 0  # 3 of the 12 weights
    result = export_onnx(model, torch.randn(1, 5, 4), tmp_path / "m.onnx", compact=False)
    matmuls = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    dense, effective = count_macs(onnx.load(str(result.path)))
    constant = 5 * 3 * 4  # (5 x 4) @ (4 x 3): 15 outputs, 4 products each
    activations = 5 * 5 * 3  # (5 x 3) @ (3 x 5): 25 outputs, 3 products each
    assert dense == constant + activations == 135
    assert effective == constant * 9 // 12 + activations == 120


def test_count_macs_by_hand(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = 0
        model[3].weight[:, :4] = 0
    result = export_onnx(model, torch.randn(1, 1, 4, 4), tmp_path / "m.onnx", compact=False)
    dense, effective = count_macs(onnx.load(str(result.path)))
    assert dense == 16 * 18 + 32 * 3  # 16 positions x 18 weights, then 32 x 3
    assert effective == 16 * 17 + 28 * 3
    # A file exported at a fixed batch of 4 is counted per sample too.
    static = export_onnx(model, torch.randn(4, 1, 4, 4), tmp_path / "static.onnx", compact=False, dynamic_batch=False)
    assert count_macs(onnx.load(str(static.path))) == (dense, effective)


def test_benchmark_table_json_and_numbers(tmp_path, capsys):
    x = torch.randn(1, 8)
    dense = export_onnx(tiny_mlp(), x, tmp_path / "dense.onnx")
    pruned = tiny_mlp()
    with torch.no_grad():
        pruned[0].weight[:2] = 0
    small = export_onnx(pruned, x, tmp_path / "small.onnx", compact=False)
    report = benchmark_onnx(
        {"dense": dense.path, "pruned": (small.path, pruned)}, batch_sizes=(1, 2), warmup=1,
        repeat=3, json_path=tmp_path / "bench.json", progress=False,
    )
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "pruned" in printed and "MMACs" in printed
    rows = {m["name"]: m for m in report.models}
    assert rows["dense"]["params"] == 8 * 4 + 4 + 4 * 3 + 3
    assert rows["dense"]["nonzeros"] == 51 and rows["pruned"]["nonzeros"] == 51 - 16
    assert rows["dense"]["macs_dense"] == 44 and rows["dense"]["macs_effective"] == 44
    assert rows["pruned"]["macs_dense"] == 44 and rows["pruned"]["macs_effective"] == 28
    assert rows["dense"]["max_rel_diff"] is None and rows["pruned"]["max_rel_diff"] <= 1e-4
    for batch in ("1", "2"):
        assert rows["dense"]["latency"][batch]["speedup"] == 1.0
        lat = rows["pruned"]["latency"][batch]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] and lat["throughput"] > 0
        assert lat["throughput"] == pytest.approx(int(batch) / (lat["p50_ms"] / 1e3))
    assert rows["dense"]["gzip_bytes"] < rows["dense"]["file_bytes"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["settings"]["batch_sizes"] == [1, 2] and saved["settings"]["threads"] == 1
    assert [m["name"] for m in saved["models"]] == ["dense", "pruned"]
    # An existing report is never replaced unasked: refused before any timing.
    with pytest.raises(PruningError, match="bench.json' already exists; pass overwrite=True"):
        benchmark_onnx(dense.path, batch_sizes=1, json_path=tmp_path / "bench.json", progress=False, verbose=False)
    assert json.loads((tmp_path / "bench.json").read_text()) == saved
    with pytest.raises(PruningError, match="already exists"):
        report.save_json(tmp_path / "bench.json")
    report.save_json(tmp_path / "bench.json", overwrite=True)


def test_benchmark_a_module_directly(capsys):
    model = create_model("mlp", num_classes=3, input_shape=(6,), width=4, depth=2)
    report = benchmark_onnx(model, batch_sizes=1, warmup=0, repeat=2, progress=False, verbose=False)
    (row,) = report.models
    assert row["name"] == "MLP" and row["max_rel_diff"] <= 1e-4 and row["path"] is None
    assert report.settings["warmup"] == 1  # warmup=0 still makes the run that checks the outputs: counted
    assert capsys.readouterr().out == ""


def test_benchmark_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ExportError, match="there is no file '.*nope.onnx'"):
        benchmark_onnx(tmp_path / "nope.onnx", progress=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ExportError, match="bad.onnx' is not a readable ONNX model"):
        benchmark_onnx(bad, progress=False)
    with pytest.raises(PruningError, match="batch_sizes"):
        benchmark_onnx(bad, batch_sizes=(0,), progress=False)
    with pytest.raises(PruningTypeError, match="each model should be"):
        benchmark_onnx([42], progress=False)


def test_count_macs_sees_the_zeros_of_a_weight_read_through_a_transpose(tmp_path):
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            # at this size the exporter reads the tied table through a Transpose (asserted below)
            self.emb, self.out = nn.Embedding(500, 64), nn.Linear(64, 500, bias=False)
            self.out.weight = self.emb.weight  # the exporter feeds the MatMul a Transpose of the table

        def forward(self, tokens):
            return self.out(torch.relu(self.emb(tokens)))

    model = TiedLM().eval()
    with torch.no_grad():
        model.emb.weight[:400] = 0  # 80% of the shared table
    result = export_onnx(model, torch.randint(0, 500, (1, 4)), tmp_path / "tied.onnx", compact=False)
    graph = onnx.load(str(result.path)).graph
    assert any(n.op_type == "Transpose" for n in graph.node)
    dense, effective = count_macs(onnx.load(str(result.path)))
    assert dense == 4 * 500 * 64 and effective == dense // 5

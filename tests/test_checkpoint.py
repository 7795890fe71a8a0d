"""Checkpoints: data that never runs code, clear errors for malformed files, atomic writes."""

import os
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin.checkpoint import (
    FORMAT,
    ModelSpec,
    factory_name,
    load_checkpoint,
    masks_of,
    read_checkpoint,
    save_checkpoint,
)
from synflow_plugin.errors import PruningError
from synflow_plugin.models import create_model

ZOO = ModelSpec("mlp", {"depth": 2, "width": 4}, num_classes=3, input_shape=(1, 6))
USER_MODULE = """\
import pathlib
from torch import nn

pathlib.Path({marker!r}).write_text("imported")  # shows whether the module was imported


def make(hidden=5):
    return nn.Sequential(nn.Flatten(), nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def evil_blob(spec="subprocess:run", options=None):
    """A checkpoint that passes torch.load(weights_only=True) and names a shell command as its factory."""
    return {
        "format": FORMAT, "format_version": 1,
        "model": {"spec": spec, "options": {"args": "touch PWNED", "shell": True} if options is None else options,
                  "num_classes": None, "input_shape": [1, 6]},
        "state_dict": {}, "masks": {}, "pruning": {}, "layers": [], "training": {},
    }


def pruned_zoo_model():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(1, 6), depth=2, width=4)
    prune.random_unstructured(model.features[0], "weight", amount=0.5)
    prune.random_unstructured(model.classifier, "weight", amount=0.25)
    return model


def effective_state(model):
    """The state dict with ``weight_orig`` replaced by ``weight_orig * weight_mask`` (pruned weights are
    stored as zeros), and masks as bool."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("_orig"):
            value = value * state[key[: -len("_orig")] + "_mask"]
        elif key.endswith("_mask"):
            value = value != 0
        out[key] = value
    return out


def assert_same_model(a, b):
    """Identical masks, identical state (the pruned layout included) and identical outputs."""
    assert masks_of(a).keys() == masks_of(b).keys() and masks_of(a)
    for key, mask in masks_of(a).items():
        assert torch.equal(masks_of(b)[key], mask), key
    state_a, state_b = effective_state(a), effective_state(b)
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert state_b[key].dtype == value.dtype and torch.equal(state_b[key], value), key
    x = torch.randn(2, 1, 6)
    assert torch.equal(a(x), b(x))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A factory module in tmp_path, importable through sys.path; removed from sys.modules afterwards."""
    name = f"ckpt_nets_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    marker = tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def save_user_checkpoint(tmp_path, name):
    """Write a pruned checkpoint of ``name:make`` without importing it through the checkpoint code."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    prune.l1_unstructured(model[1], "weight", amount=0.5)
    path = save_checkpoint(tmp_path / "user.pt", model, ModelSpec(f"{name}:make", {"hidden": 7}, input_shape=(1, 6)))
    return model, path


# --------------------------------------------------------------------------- a checkpoint runs no code
@pytest.mark.parametrize("spec, options", [
    ("subprocess:run", None),
    ("os:system", {"command": "touch PWNED"}),
    ("subprocess:Popen", {"args": ["touch", "PWNED"]}),
])
def test_a_checkpoint_naming_a_command_runs_nothing(spec, options, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save(evil_blob(spec, options), path)
    assert torch.load(path, weights_only=True)["model"]["spec"] == spec  # the safe unpickler lets it through
    path_before = list(sys.path)
    with pytest.raises(PruningError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"names the user factory {spec!r}" in message
    assert f"factory={spec!r}" in message and f"--factory {spec}" in message
    assert "nothing was imported" in message
    assert not (tmp_path / "PWNED").exists()
    assert sys.path == path_before


def test_a_checkpoint_factory_must_be_the_one_the_caller_named(tmp_path, monkeypatch, user_module):
    name, marker = user_module
    monkeypatch.chdir(tmp_path)
    torch.save(evil_blob(), tmp_path / "evil.pt")
    for allowed in (f"{name}:make", create_model):
        with pytest.raises(PruningError, match=r"names the factory 'subprocess:run'.*factory='subprocess:run'"):
            load_checkpoint(tmp_path / "evil.pt", factory=allowed)
    assert not (tmp_path / "PWNED").exists()
    assert not marker.exists()  # a mismatch imports neither the file's factory nor the caller's


def test_a_user_factory_is_not_imported_unless_named(tmp_path, user_module):
    name, marker = user_module
    _, path = save_user_checkpoint(tmp_path, name)
    with pytest.raises(PruningError, match=f"names the user factory '{name}:make'"):
        load_checkpoint(path)
    assert not marker.exists() and name not in sys.modules
    with pytest.raises(PruningError, match=f"names the factory '{name}:make', not '{name}:other'"):
        load_checkpoint(path, factory=f"{name}:other")
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize("by", ["string", "callable"])
def test_a_user_factory_checkpoint_round_trips(by, tmp_path, user_module):
    name, marker = user_module
    model, path = save_user_checkpoint(tmp_path, name)
    if by == "string":
        factory = f"{name}:make"
    else:
        import importlib

        factory = importlib.import_module(name).make
        assert factory_name(factory) == f"{name}:make"
    loaded, blob = load_checkpoint(path, factory=factory)
    assert marker.exists()
    assert blob["model"]["options"] == {"hidden": 7}
    assert int(masks_of(loaded)["1.weight"].sum()) == 6 * 7 - 21
    assert_same_model(model, loaded)


def test_a_callable_factory_must_have_the_recorded_name(tmp_path, user_module):
    name, marker = user_module
    _, path = save_user_checkpoint(tmp_path, name)

    def make(hidden=5):  # same name, other module
        raise AssertionError("must not be called")

    with pytest.raises(PruningError, match=f"names the factory '{name}:make', but the callable given is "
                                           r"'test_checkpoint:.*make'"):
        load_checkpoint(path, factory=make)


# --------------------------------------------------------------------------- zoo checkpoints
def test_a_zoo_checkpoint_round_trips(tmp_path):
    model = pruned_zoo_model()
    path = save_checkpoint(tmp_path / "zoo.pt", model, ZOO, pruning={"criterion": "random"})
    loaded, blob = load_checkpoint(path)
    assert blob["model"] == ZOO.as_dict() and blob["pruning"] == {"criterion": "random"}
    assert_same_model(model, loaded)
    assert read_checkpoint(path)["model"]["spec"] == "mlp"


def test_a_zoo_checkpoint_refuses_a_factory(tmp_path):
    path = save_checkpoint(tmp_path / "zoo.pt", pruned_zoo_model(), ZOO)
    with pytest.raises(PruningError, match="names the zoo model 'mlp', which is built without a factory"):
        load_checkpoint(path, factory="mypkg.nets:make")


@pytest.mark.parametrize("options, message", [
    ({"depth": 2, "shell": True}, "model 'mlp' does not take the option(s) shell; its options are: depth, width"),
    ({"name": "vgg16"}, "does not take the option(s) name"),
    ({"depth": torch.tensor(2)}, "model['options']['depth'] is a Tensor"),
    ({"width": [4, torch.ones(1)]}, "model['options']['width'][1] is a Tensor"),
    ({"width": {"a": b"x"}}, "model['options']['width']['a'] is a bytes"),
])
def test_zoo_options_are_json_and_known_to_the_factory(options, message, tmp_path):
    blob = torch.load(save_checkpoint(tmp_path / "zoo.pt", pruned_zoo_model(), ZOO), weights_only=True)
    blob["model"]["options"] = options
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(PruningError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert message in str(info.value) and "checkpoint '" in str(info.value)


def test_a_zoo_name_with_a_colon_free_module_path_is_unknown(tmp_path):
    torch.save(evil_blob(spec="subprocess"), tmp_path / "evil.pt")
    with pytest.raises(PruningError, match="unknown model 'subprocess'; expected one of: vgg11"):
        load_checkpoint(tmp_path / "evil.pt")


# --------------------------------------------------------------------------- malformed checkpoints
def _drop(key):
    def edit(blob):
        del blob[key]
    return edit


def _set_mask(value):
    def edit(blob):
        blob["masks"]["features.0.weight"] = value
    return edit


def _set_state(key, value):
    def edit(blob):
        if value is None:
            del blob["state_dict"][key]
        else:
            blob["state_dict"][key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_drop("model"), "has no 'model' entry"),
    (_drop("state_dict"), "has no 'state_dict' entry"),
    (_drop("masks"), "has no 'masks' entry"),
    (lambda b: b.update(masks=[1, 2]), "'masks' should be a dict of tensors, got list"),
    (lambda b: b["masks"].update({"features.0.weight": [1, 0]}), "masks['features.0.weight'] should be a tensor"),
    (lambda b: b.update(model="mlp"), "'model' should be a dict with a 'spec' key, got str"),
    (lambda b: b["model"].update(input_shape=[1, -6]), "model['input_shape'] should be a list of positive ints"),
    (lambda b: b["model"].update(num_classes="3"), "model['num_classes'] should be an int or None"),
    (lambda b: b.update(format_version=2), "has format_version 2; this synflow-plugin reads versions up to 1"),
    (lambda b: b.update(pruning=[1]), "'pruning' should be a dict, got list"),
    (_set_mask(torch.ones(6, 4, dtype=torch.bool)),
     "mask 'features.0.weight' has shape (6, 4), expected (4, 6)"),
    (_set_mask(torch.full((4, 6), 0.5)),
     "mask 'features.0.weight' (torch.float32) holds 24 value(s) other than 0 and 1 (e.g. 0.5, 0.5"),
    (_set_mask(torch.full((4, 6), 2, dtype=torch.int64)), "holds 24 value(s) other than 0 and 1 (e.g. 2"),
    (_set_mask(torch.full((4, 6), float("nan"))), "other than 0 and 1 (e.g. nan"),
    (_set_mask(torch.ones(4, 6, dtype=torch.complex64)), "has dtype torch.complex64, expected torch.bool"),
    (lambda b: b["masks"].update({"features.9.weight": torch.ones(4, 6, dtype=torch.bool)}),
     "mask 'features.9.weight' names no parameter of the rebuilt model"),
    (lambda b: b["masks"].update({"classifier.weight_orig": torch.ones(3, 4, dtype=torch.bool)}),
     "mask 'classifier.weight_orig' names no parameter"),
    (_set_state("classifier.bias", torch.zeros(5)), "'classifier.bias' has shape (5,), expected (3,)"),
    (_set_state("classifier.bias", None), "missing 'classifier.bias' (3,)"),
    (_set_state("extra.weight", torch.zeros(2)), "unexpected 'extra.weight' (2,)"),
    (_set_state("classifier.bias", torch.zeros(3, dtype=torch.int64)),
     "'classifier.bias' has dtype torch.int64, expected torch.float32"),
])
def test_a_malformed_checkpoint_is_a_clear_error(edit, message, tmp_path):
    blob = torch.load(save_checkpoint(tmp_path / "ok.pt", pruned_zoo_model(), ZOO), weights_only=True)
    edit(blob)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(PruningError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert message in str(info.value)
    assert f"checkpoint '{tmp_path / 'bad.pt'}'" in str(info.value)


def test_a_state_dict_mismatch_names_the_rebuilt_model(tmp_path):
    blob = torch.load(save_checkpoint(tmp_path / "ok.pt", pruned_zoo_model(), ZOO), weights_only=True)
    blob["model"]["options"]["width"] = 5  # the file's tensors are those of width 4
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(PruningError) as info:
        load_checkpoint(tmp_path / "bad.pt")
    message = str(info.value)
    assert "does not fit the model mlp(depth=2, width=5)" in message
    assert "'features.0.weight' has shape (4, 6), expected (5, 6)" in message
    assert "written for another model or other options" in message


def test_zero_one_masks_of_any_number_type_load_as_bool(tmp_path):
    model = pruned_zoo_model()
    blob = torch.load(save_checkpoint(tmp_path / "ok.pt", model, ZOO), weights_only=True)
    blob["masks"] = {k: v.to(torch.float16 if i else torch.uint8) for i, (k, v) in enumerate(blob["masks"].items())}
    torch.save(blob, tmp_path / "numeric.pt")
    loaded, _ = load_checkpoint(tmp_path / "numeric.pt")
    assert_same_model(model, loaded)


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "cannot read checkpoint"),
    (None, "is not a synflow-plugin checkpoint"),
])
def test_not_a_checkpoint(content, message, tmp_path):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"format": "something-else"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(PruningError, match=message):
        load_checkpoint(path)
    with pytest.raises(PruningError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Opaque:
    pass


def test_a_file_holding_objects_is_refused_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"format": "x", "thing": _Opaque()}, path)
    with pytest.raises(PruningError, match=r"holds more than tensors .*_Opaque.*refused without importing") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value) and "add_safe_globals" not in str(error.value)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(PruningError, match="is an ONNX file, not a checkpoint"):
        load_checkpoint(tmp_path / "model.onnx")


# --------------------------------------------------------------------------- writing
def test_save_refuses_an_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"keep")
    with pytest.raises(PruningError, match=r"'.*m\.pt' already exists; pass overwrite=True"):
        save_checkpoint(path, pruned_zoo_model(), ZOO)
    assert path.read_bytes() == b"keep"
    save_checkpoint(path, pruned_zoo_model(), ZOO, overwrite=True)
    assert read_checkpoint(path)["model"]["spec"] == "mlp"
    assert os.listdir(tmp_path) == ["m.pt"]


def test_save_refuses_a_directory(tmp_path):
    with pytest.raises(PruningError, match="is a directory; pass a file name such as"):
        save_checkpoint(tmp_path, pruned_zoo_model(), ZOO, overwrite=True)
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_bytes(b"old")

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, pruned_zoo_model(), ZOO, overwrite=True)
    assert os.listdir(tmp_path) == ["m.pt"] and path.read_bytes() == b"old"


def test_a_written_checkpoint_has_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", pruned_zoo_model(), ZOO)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_save_refuses_options_that_could_not_be_loaded_back(tmp_path):
    spec = ModelSpec("mlp", {"depth": torch.tensor(2)}, input_shape=(1, 6))
    with pytest.raises(PruningError, match=r"model\['options'\]\['depth'\] is a Tensor"):
        save_checkpoint(tmp_path / "m.pt", pruned_zoo_model(), spec)
    assert os.listdir(tmp_path) == []

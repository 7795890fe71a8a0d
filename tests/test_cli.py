"""The ``synflow-plugin`` command line, end to end on tiny models, and the demo on a reduced grid.

Commands run in-process through :func:`synflow_plugin.cli.main` (the same code the
console script runs); a subprocess is used only where the process boundary is what
is tested: ``python -m synflow_plugin`` and the console script, and one ``prune``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synflow_plugin.cli import main, parse_compression
from synflow_plugin.criteria import CRITERIA, get_criterion, list_criteria
from synflow_plugin.demo import PAPER_CRITICAL_LOG10, collapse_sweep
from synflow_plugin.models import create_model, list_models

COMMANDS = ("list", "prune", "collapse", "train", "export", "bench", "demo", "sweep")
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, cwd=None, timeout=240):
    """``python -m synflow_plugin ARGS`` in a subprocess, single-threaded, no progress bars."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "synflow_plugin", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- parsing (in process)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: synflow-plugin {command}")
    assert "--threads" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out


@pytest.mark.parametrize("text, value", [("100", 100.0), ("100x", 100.0), ("1e3", 1000.0), ("10^2", 100.0),
                                         ("10**0.5", 10 ** 0.5), ("1", 1.0)])
def test_parse_compression(text, value):
    assert parse_compression(text) == pytest.approx(value)


@pytest.mark.parametrize("argv, message", [
    (["prune", "conv", "-c", "synflw", "--compression", "10", "-o", "x.pt"],
     "argument -c/--criterion: invalid choice: 'synflw' (choose from " + ", ".join(f"'{c}'" for c in list_criteria())),
    (["prune", "vgg17", "-c", "synflow", "--compression", "10", "-o", "x.pt"],
     "argument MODEL: invalid choice: 'vgg17' (choose from " + ", ".join(list_models())),
    (["prune", "conv", "-c", "synflow", "--compression", "0.5", "-o", "x.pt"],
     "argument --compression: invalid compression '0.5'"),
    (["prune", "conv", "-c", "synflow", "--amount", "1.5", "-o", "x.pt"], "argument --amount: invalid amount '1.5'"),
    (["prune", "conv", "-c", "synflow", "--amount", "0.5", "--compression", "2", "-o", "x.pt"],
     "argument --compression: not allowed with argument --amount"),
    (["prune", "conv", "-c", "snip", "--compression", "10", "-o", "x.pt"],
     "argument --dataset: required by data-driven criteria; choose from cifar10, cifar100, digits, mnist1d"),
    (["prune", "conv", "-c", "synflow", "--compression", "10", "--dataset", "cifar10", "-o", "x.pt"],
     "argument --data-root: cifar10 is read from disk"),
    (["prune", "conv", "-c", "synflow", "--compression", "10", "--scope", "layer", "-o", "x.pt"],
     "argument --scope: invalid choice: 'layer' (choose from 'global', "),
    (["prune", "conv", "-c", "synflow", "--compression", "10", "--model-option", "depth=1", "-o", "x.pt"],
     "depth"),
    (["collapse", "conv", "--criteria", "synflow,snap"], "argument --criteria: invalid choice: snap (choose from random"),
    (["prune", "conv", "--dataset", "digits", "-c", "snip", "--amount", "0.5", "--num-classes", "3", "-o", "x.pt"],
     "argument --num-classes: 3 classes, but the criterion scores on digits, which has 10"),
    (["collapse", "conv", "--plot", "x.xyz"], "argument --plot: 'x.xyz' has no image extension matplotlib writes"),
    (["collapse", "conv", "--plot", "nodir/x.png"], "argument --plot: the folder 'nodir' does not exist"),
    (["train", "vgg17", "--dataset", "digits"], "is neither a file nor a zoo model (choose from vgg11"),
    (["train", "conv", "--dataset", "svhn"], "argument --dataset: invalid choice: 'svhn' (choose from 'cifar10'"),
    (["demo", "--skip", "everything"], "argument --skip: invalid choice: 'everything' (choose from 'collapse'"),
    (["bench", "missing.onnx"], "argument FILE: 'missing.onnx' does not exist"),
    (["bench", "missing.onnx", "--batch-sizes", "1,x"], "argument --batch-sizes: invalid batch sizes '1,x'"),
    (["bench", "missing.onnx", "--batch-sizes", "0,8"], "argument --batch-sizes: invalid batch sizes '0,8'"),
    (["prune", "conv", "-c", "synflow", "--compression", "10^400", "-o", "x.pt"],
     "argument --compression: invalid compression '10^400': too large for a float"),
    (["prune", "conv", "--input-shape", "1,x,8", "-c", "synflow", "--compression", "10", "-o", "x.pt"],
     "argument --input-shape: invalid shape '1,x,8'"),
    (["prune", "conv", "-c", "synflow", "--compression", "10", "-o", "x.pt", "--json", "x.pt"],
     "argument --json: 'x.pt' is also the -o/--output file"),
    (["train", "conv", "--dataset", "digits", "--factory", "m:f"],
     "argument --factory: applies to a checkpoint, but 'conv' is not a file"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate' (choose from 'list', 'prune'"),
])
def test_bad_arguments_exit_2_with_the_valid_choices(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: synflow-plugin" in err
    assert message in err
    assert not (tmp_path / "x.pt").exists()


def test_list_json_reports_criteria_models_and_datasets(capsys):
    assert main(["list", "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    needs = {c["name"]: c["needs_data"] for c in blob["criteria"]}
    assert list(needs) == list_criteria()
    assert {n: needs[n] for n in ("random", "magnitude", "snip", "grasp", "synflow", "itersnip", "force")} == {
        "random": False, "magnitude": False, "snip": True, "grasp": True, "synflow": False,
        "itersnip": True, "force": True}
    by_name = {c["name"]: c for c in blob["criteria"]}
    assert by_name["synflow"]["default_iterations"] == 100 and by_name["itersnip"]["default_iterations"] == 10
    for name, row in by_name.items():  # every row as the criterion declares it
        cls = CRITERIA[name]
        assert (row["needs_data"], row["needs_example_inputs"], row["seeded"], row["default_iterations"]) == (
            cls.needs_data, cls.needs_example_inputs, cls.seeded, cls.default_iterations), name
    assert "synflow" in [n for n, c in by_name.items() if c["needs_example_inputs"]]
    assert "random" in [n for n, c in by_name.items() if c["seeded"]]
    assert by_name["synflow"]["summary"] == get_criterion("synflow").summary
    assert all(c["summary"] for c in blob["criteria"])
    assert blob["models"] == list_models()
    assert {d["name"] for d in blob["datasets"]} == {"mnist1d", "digits", "cifar10", "cifar100"}


def test_list_table_shows_each_criterion_with_its_capabilities(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:5] for line in out.split("\n\n")[0].splitlines()[2:]}
    assert list(rows) == list_criteria()
    assert rows["synflow"] == ["no", "yes", "no", "100"]  # data, inputs, seeded, rounds
    assert rows["snip"] == ["yes", "no", "no", "1"]
    assert rows["random"] == ["no", "no", "yes", "1"]
    assert get_criterion("force").summary in out


def test_prune_seeds_a_seeded_criterion_from_seed(tmp_path, capsys):
    def masks(seed, *extra):
        out = tmp_path / f"r{seed}{len(extra)}.pt"
        assert main(["prune", *MLP, "-c", "random", "--amount", "0.5", "--seed", str(seed), "-o", str(out),
                     "--no-progress", *extra]) == 0
        return torch.load(out, weights_only=True)

    first, again, other = masks(0), masks(0, "--overwrite"), masks(1)
    assert first["pruning"]["criterion_options"] == {"seed": 0}
    assert other["pruning"]["criterion_options"] == {"seed": 1}
    assert all(torch.equal(first["masks"][k], again["masks"][k]) for k in first["masks"])
    assert any(not torch.equal(first["masks"][k], other["masks"][k]) for k in first["masks"])
    # an explicit criterion option wins; the scores, drawn from it alone, give the seed-0 mask
    explicit = masks(1, "--criterion-option", "seed=0")
    assert explicit["pruning"]["criterion_options"] == {"seed": 0}
    assert all(torch.equal(first["masks"][k], explicit["masks"][k]) for k in first["masks"])
    capsys.readouterr()


def test_prune_in_process_writes_exact_counts_and_sanity_options(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["prune", "mlp", "--input-shape", "1,12", "--model-option", "depth=3", "--model-option", "width=16",
                 "-c", "magnitude", "--amount", "0.75", "--invert", "--shuffle", "--reinit", "-o", str(out),
                 "--json", str(tmp_path / "m.json"), "--no-progress"]) == 0
    assert "magnitude (inverted): kept" in capsys.readouterr().out
    blob = torch.load(out, weights_only=True)
    total = 12 * 16 + 16 * 16 + 16 * 10
    assert sum(int(m.sum()) for m in blob["masks"].values()) == total - round(0.75 * total)
    assert blob["pruning"]["sanity"] == {"invert": True, "shuffle": True, "reinit": True}
    report = json.loads((tmp_path / "m.json").read_text())
    assert sum(row["remaining"] for row in report["layers"]) == total - round(0.75 * total)


def test_collapse_sweep_coarse_to_fine_matches_the_linear_sweep():
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 20), depth=3, width=32)
    x = torch.randn(1, 1, 20)
    linear = collapse_sweep(lambda: model, "magnitude", max_exponent=4, coarse_step=0.5, fine_step=0.5,
                            example_inputs=x)
    fine = collapse_sweep(lambda: model, "magnitude", max_exponent=4, coarse_step=1.0, fine_step=0.5,
                          example_inputs=x)
    assert fine.critical_exponent == linear.critical_exponent
    assert linear.critical_exponent is not None and linear.critical_exponent < 4
    assert len(fine.points) <= len(linear.points) + 1
    assert [p["exponent"] for p in fine.points] == sorted(p["exponent"] for p in fine.points)


# --------------------------------------------------------------------------- files and checkpoints (in process)
MLP = ["mlp", "--input-shape", "1,8,8", "--model-option", "depth=2", "--model-option", "width=8"]
FACTORY_MODULE = """\
import pathlib
from torch import nn

pathlib.Path({marker!r}).write_text("imported")  # shows whether the module was imported


def make(hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


def prune_mlp(out, *extra):
    return main(["prune", *MLP, "-c", "magnitude", "--amount", "0.5", "-o", str(out), "--no-progress", *extra])


def exit_code_and_err(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A factory module in the working directory (tmp_path), not on sys.path; forgotten afterwards."""
    name = f"cli_nets_{tmp_path.name}".replace("-", "_")
    marker = tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(FACTORY_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    yield name, marker
    sys.modules.pop(name, None)


@pytest.mark.parametrize("argv", [
    ["export", "evil.pt", "-o", "evil.onnx"],
    ["export", "evil.pt", "-o", "evil.onnx", "--factory", "os.path:join"],
    ["train", "evil.pt", "--dataset", "digits", "--epochs", "1", "-o", "evil_trained.pt"],
    ["bench", "evil.pt", "--repeat", "1", "--warmup", "0", "--json", "evil.json"],
    ["bench", "evil.pt", "--repeat", "1", "--factory", "subprocess:call"],
])
def test_a_checkpoint_naming_a_command_runs_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "synflow-plugin-checkpoint", "format_version": 1,
                "model": {"spec": "subprocess:run", "options": {"args": "touch PWNED", "shell": True},
                          "num_classes": None, "input_shape": [1, 8, 8]},
                "state_dict": {}, "masks": {}}, tmp_path / "evil.pt")
    path_before = list(sys.path)
    code, err = exit_code_and_err(argv, capsys)
    assert code == 2
    assert "names the user factory 'subprocess:run'" in err or "names the factory 'subprocess:run'" in err
    assert "--factory subprocess:run" in err
    assert not (tmp_path / "PWNED").exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pt"]  # and no output written
    assert sys.path == path_before


def test_a_user_factory_from_the_working_directory(factory_module, tmp_path, capsys):
    name, marker = factory_module
    path_before = list(sys.path)
    assert main(["prune", f"{name}:make", "--model-option", "hidden=8", "--input-shape", "1,8,8", "-c", "magnitude",
                 "--amount", "0.5", "-o", "u.pt", "--no-progress"]) == 0  # named on the command line: imported
    assert sys.path == path_before and marker.exists()
    pruned = torch.load(tmp_path / "u.pt", weights_only=True)
    assert pruned["model"]["spec"] == f"{name}:make"
    sys.modules.pop(name)
    marker.unlink()

    code, err = exit_code_and_err(["train", "u.pt", "--dataset", "digits", "--epochs", "1", "-o", "t.pt"], capsys)
    assert code == 2 and f"names the user factory '{name}:make'" in err and f"--factory {name}:make" in err
    assert not marker.exists() and not (tmp_path / "t.pt").exists()
    code, err = exit_code_and_err(["export", "u.pt", "-o", "u.onnx", "--factory", f"{name}:other"], capsys)
    assert code == 2 and f"names the factory '{name}:make', which is not among --factory {name}:other" in err
    assert not marker.exists()

    assert main(["train", "u.pt", "--dataset", "digits", "--epochs", "1", "-o", "t.pt", "--factory", f"{name}:make",
                 "--no-progress"]) == 0
    assert marker.exists() and sys.path == path_before
    trained = torch.load(tmp_path / "t.pt", weights_only=True)
    assert trained["model"] == pruned["model"]
    assert trained["masks"].keys() == pruned["masks"].keys()
    for key, mask in pruned["masks"].items():
        assert torch.equal(trained["masks"][key], mask)
        assert not trained["state_dict"][key][~mask].any()

    if not (has("onnx") and has("onnxruntime")):
        pytest.skip("onnx / onnxruntime not installed")
    sys.modules.pop(name)
    assert main(["export", "t.pt", "-o", "t.onnx", "--no-compact", "--factory", f"{name}:make"]) == 0
    assert (tmp_path / "t.onnx").stat().st_size > 0
    assert main(["bench", "t.onnx", "u.pt", "--factory", f"{name}:make", "--batch-sizes", "1", "--repeat", "1",
                 "--warmup", "0", "--json", "b.json", "--no-progress"]) == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    assert [m["name"] for m in bench["models"]] == ["t", "u"]
    assert sys.path == path_before


def test_factory_must_be_named_by_some_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert prune_mlp("p.pt") == 0
    code, err = exit_code_and_err(["export", "p.pt", "-o", "p.onnx", "--factory", "mypkg.nets:make"], capsys)
    assert code == 2
    assert "argument --factory: no checkpoint given names 'mypkg.nets:make' (they name: mlp); drop it" in err
    assert not (tmp_path / "p.onnx").exists()


def existing_output_argv(command, flag):
    """An argv of ``command`` whose ``flag`` names the existing file 'old.out'."""
    base = {
        "prune": ["prune", *MLP, "-c", "magnitude", "--amount", "0.5", "-o", "new.pt", "--no-progress"],
        "train": ["train", "p.pt", "--dataset", "digits", "--epochs", "1", "--no-progress"],
        "collapse": ["collapse", *MLP, "--criteria", "magnitude", "--max-exponent", "1", "--no-progress"],
        "bench": ["bench", "p.pt", "--repeat", "1", "--warmup", "0", "--no-progress"],
        "export": ["export", "p.pt", "--no-compact"],
    }[command]
    if flag == "-o" and "-o" in base:
        base = base[:base.index("-o")] + base[base.index("-o") + 2:]
    return base + [flag, "old.out"]


@pytest.mark.parametrize("command, flag", [
    ("prune", "-o"), ("prune", "--json"), ("train", "-o"), ("train", "--json"), ("collapse", "--json"),
    ("collapse", "--plot"), ("bench", "--json"), ("export", "-o"),
])
def test_every_command_refuses_an_existing_output(command, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert prune_mlp("p.pt") == 0
    (tmp_path / "old.out").write_text("keep")
    capsys.readouterr()
    code, err = exit_code_and_err(existing_output_argv(command, flag), capsys)
    assert code == 2
    assert "'old.out' already exists; pass --overwrite to replace it" in err
    assert (tmp_path / "old.out").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["old.out", "p.pt"]


def test_overwrite_replaces_an_existing_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_text("old")
    (tmp_path / "c.json").write_text("old")
    assert prune_mlp("m.pt", "--overwrite") == 0
    assert torch.load(tmp_path / "m.pt", weights_only=True)["pruning"]["criterion"] == "magnitude"
    assert main(["collapse", *MLP, "--criteria", "magnitude", "--max-exponent", "1", "--json", "c.json",
                 "--overwrite", "--no-progress"]) == 0
    assert "magnitude" in json.loads((tmp_path / "c.json").read_text())["criteria"]
    assert sorted(os.listdir(tmp_path)) == ["c.json", "m.pt"]  # no temporary file left


def test_prune_into_a_directory_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    code, err = exit_code_and_err(["prune", *MLP, "-c", "magnitude", "--amount", "0.5", "-o", str(out)], capsys)
    assert code == 2 and f"argument -o/--output: '{out}' is a directory; give a file name such as" in err
    assert os.listdir(out) == [] and os.listdir(tmp_path) == ["models"]


@pytest.mark.parametrize("budget", [["--amount", "1.0"], ["--compression", "10^99"]])
def test_prune_refuses_to_empty_every_layer(budget, tmp_path, capsys):
    argv = ["prune", *MLP, "-c", "magnitude", *budget, "-o", str(tmp_path / "e.pt"), "--no-progress"]
    code, err = exit_code_and_err(argv, capsys)
    assert code == 2
    assert "prunes all 592 weights of mlp: every layer would be empty" in err and "--allow-empty" in err
    assert not (tmp_path / "e.pt").exists()
    assert main(argv + ["--allow-empty"]) == 0
    blob = torch.load(tmp_path / "e.pt", weights_only=True)
    assert sum(int(m.sum()) for m in blob["masks"].values()) == 0


def test_list_json_into_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader (`| head`) is gone
    stream = open(write_fd, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main(["list", "--json"]) == 1
        stream.write("more")
        stream.flush()  # stdout now leads to devnull: no second BrokenPipeError at exit
    finally:
        stream.close()
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- end to end
def test_console_script_and_module_agree(tmp_path):
    from synflow_plugin import __version__

    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"synflow-plugin {__version__}")
    script = Path(sys.executable).with_name("synflow-plugin")
    if not script.exists():
        script = shutil.which("synflow-plugin")
    if script is None:
        pytest.skip("the console script is not installed in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, f"synflow-plugin {__version__}")


def test_prune_train_export_bench_end_to_end(tmp_path, capsys):
    pruned, trained = tmp_path / "p.pt", tmp_path / "t.pt"
    # the one command run through the process boundary: exit status, stdout and the file it writes
    result = run_cli("prune", "conv", "--dataset", "digits", "--model-option", "width=8", "-c", "synflow",
                     "--compression", "10^1", "--iterations", "20", "--seed", "3", "-o", str(pruned),
                     "--threads", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "no layer collapsed" in result.stdout

    blob = torch.load(pruned, weights_only=True)
    assert blob["model"] == {"spec": "conv", "options": {"width": 8}, "num_classes": 10, "input_shape": [1, 8, 8]}
    size = sum(m.numel() for m in blob["masks"].values())
    kept = sum(int(m.sum()) for m in blob["masks"].values())
    assert kept == size - round(0.9 * size)
    assert blob["pruning"]["criterion"] == "synflow" and blob["pruning"]["iterations"] == 20
    assert blob["pruning"]["compression"] == pytest.approx(size / kept)
    for row in blob["layers"]:
        mask = blob["masks"][row["name"]]
        assert row["remaining"] == int(mask.sum()) and row["density"] == pytest.approx(float(mask.float().mean()))
        assert int(torch.count_nonzero(blob["state_dict"][row["name"]])) <= row["remaining"]

    assert main(["train", str(pruned), "--dataset", "digits", "--epochs", "2", "--lr", "3e-3",
                 "-o", str(trained), "--json", str(tmp_path / "t.json"), "--no-progress"]) == 0
    history = json.loads((tmp_path / "t.json").read_text())["training"]
    assert len(history["history"]) == 2 and 0.3 < history["test_accuracy"] <= 1.0
    after = torch.load(trained, weights_only=True)
    for name, mask in blob["masks"].items():
        assert torch.equal(after["masks"][name], mask)  # training kept the masks
        assert not after["state_dict"][name][~mask].any()  # and the pruned weights at zero
    assert after["training"]["test_accuracy"] == pytest.approx(history["test_accuracy"])

    if not (has("onnx") and has("onnxruntime")):
        pytest.skip("onnx / onnxruntime not installed")
    onnx_path = tmp_path / "t.onnx"
    assert main(["export", str(trained), "-o", str(onnx_path), "--no-compact"]) == 0
    assert onnx_path.stat().st_size > 0
    code, err = exit_code_and_err(["export", str(trained), "-o", str(onnx_path), "--no-compact"], capsys)
    assert code == 2 and "overwrite" in err
    assert main(["bench", str(onnx_path), str(trained), "--batch-sizes", "1,4", "--repeat", "2",
                 "--warmup", "1", "--json", str(tmp_path / "b.json"), "--no-progress"]) == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    assert [m["name"] for m in bench["models"]] == ["t", "t.pt"]
    assert bench["settings"]["batch_sizes"] == [1, 4]
    assert all(set(m["latency"]) == {"1", "4"} for m in bench["models"])
    assert bench["models"][1]["nonzeros"] <= kept + sum(v.numel() for k, v in after["state_dict"].items()
                                                         if k.endswith("bias"))


def test_prune_data_driven_and_user_factory(tmp_path, monkeypatch, capsys):
    name = f"mynets_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(
        "import torch.nn as nn\n"
        "def make(hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    out = tmp_path / "u.pt"
    try:
        assert main(["prune", f"{name}:make", "--model-option", "hidden=16", "--dataset", "digits", "-c", "snip",
                     "--compression", "4", "--calibration-per-class", "2", "-o", str(out), "--no-progress"]) == 0
    finally:
        sys.modules.pop(name, None)
    blob = torch.load(out, weights_only=True)
    assert blob["model"]["spec"] == f"{name}:make" and blob["model"]["options"] == {"hidden": 16}
    assert blob["model"]["input_shape"] == [1, 8, 8]
    assert blob["pruning"]["calibration_per_class"] == 2
    size = 64 * 16 + 16 * 10
    assert sum(int(m.sum()) for m in blob["masks"].values()) == size - round(0.75 * size)


def test_collapse_command_json(tmp_path, capsys):
    assert main(["collapse", "mlp", "--input-shape", "1,16", "--model-option", "depth=3",
                 "--model-option", "width=16", "--criteria", "synflow,magnitude", "--max-exponent", "3",
                 "--step", "0.5", "--iterations", "10", "--json", str(tmp_path / "c.json"), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    blob = json.loads((tmp_path / "c.json").read_text())
    grid = {0.5 * k for k in range(7)}
    for name in ("synflow", "magnitude"):
        info = blob["criteria"][name]
        assert all(p["exponent"] in grid for p in info["points"])
        assert info["critical_exponent"] is None or info["critical_exponent"] in grid
        assert info["paper_exponent"] is None  # the paper's values are for VGG-16-BN only
    assert blob["criteria"]["synflow"]["critical_exponent"] >= blob["criteria"]["magnitude"]["critical_exponent"]
    # --iterations sets the rounds of the iterative criteria only
    assert (blob["criteria"]["synflow"]["iterations"], blob["criteria"]["magnitude"]["iterations"]) == (10, 1)
    assert "synflow" in stdout and "magnitude" in stdout


def test_demo_tiny_writes_report_pictures_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--tiny", "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the demo restores the caller's threads
    assert "[collapse]" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert settings["mode"] == "tiny" and results["environment"]["torch_threads"] == 1

    collapse = results["collapse"]["criteria"]
    assert list(collapse) == ["magnitude", "random", "snip", "grasp", "synflow"]
    grid = {0.5 * k for k in range(int(settings["max_exponent"] / 0.5) + 1)}
    for name, info in collapse.items():
        assert info["paper_exponent"] == PAPER_CRITICAL_LOG10[name]
        assert info["critical_exponent"] in grid
        assert all(p["exponent"] in grid for p in info["points"])
    assert len(collapse["random"]["critical_exponents_per_seed"]) == len(settings["random_seeds"])
    assert [n for n, info in collapse.items() if len(info["seeds"]) > 1] == ["random"]  # the seeded one
    assert collapse["synflow"]["iterations"] == settings["synflow_iterations"]
    assert collapse["snip"]["iterations"] == 1
    assert collapse["synflow"]["critical_exponent"] >= max(
        info["critical_exponent"] for name, info in collapse.items() if name != "synflow")
    assert "digits" in results["collapse"]["data"]

    accuracy = results["accuracy"]
    runs = accuracy["runs"]
    assert len(runs) == len(settings["seeds"]) * (1 + 5 * len(settings["compressions_log10"]))
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    for r in runs:
        assert r["density"] == pytest.approx(10.0 ** -r["exponent"], rel=0.05)
    assert {r["criterion"] for r in accuracy["summary"]} == {"dense", "magnitude", "random", "snip", "grasp",
                                                              "synflow"}
    assert {r["sanity"] for r in results["sanity"]["summary"]} == {None, "shuffle", "reinit", "invert"}

    for picture in results["pictures"]:
        assert (out / picture).read_bytes()[:8] == PNG
    assert {"demo.png", "collapse_layers.png", "accuracy.png"} <= set(results["pictures"])
    report = (out / "report.md").read_text()
    assert "Mode **tiny**" in report
    for name, info in collapse.items():
        assert f"| {name} | **{info['critical_exponent']:g}" in report or f"| {name} | **≥ " in report
    assert "| 5.92 |" in report
    if "skipped" not in results["export"]:
        assert (out / "onnx" / "synflow_compacted.onnx").exists()
        assert "speedup" in report

    # redrawing from results.json measures nothing and reproduces the report
    (out / "demo.png").unlink()
    assert main(["demo", "--render-only", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    assert (out / "demo.png").read_bytes()[:8] == PNG


def test_demo_render_only_needs_a_finished_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--render-only", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "results.json' does not exist; run `synflow-plugin demo --out" in capsys.readouterr().err


def test_threads_are_the_callers_again_after_an_in_process_command(capsys):
    threads = torch.get_num_threads()
    assert main(["list", "--threads", "1" if threads != 1 else "2"]) == 0
    assert torch.get_num_threads() == threads


def test_train_refuses_a_model_whose_outputs_are_not_the_data_sets_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "conv", "--input-shape", "1,8,8", "--num-classes", "3", "-c", "magnitude",
                 "--amount", "0.5", "-o", "c3.pt", "--no-progress"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "c3.pt", "--dataset", "digits", "--epochs", "1", "--no-progress"])
    assert exit_info.value.code == 2
    assert "the model has 3 outputs but digits has 10 classes" in capsys.readouterr().err

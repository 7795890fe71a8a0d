"""The ``synflow-plugin`` command line, end to end on tiny models, and the demo on a reduced grid."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synflow_plugin.cli import main, parse_compression
from synflow_plugin.criteria import list_criteria
from synflow_plugin.demo import PAPER_CRITICAL_LOG10, collapse_sweep
from synflow_plugin.models import create_model, list_models

COMMANDS = ("list", "prune", "collapse", "train", "export", "bench", "demo")
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
    (["train", "vgg17", "--dataset", "digits"], "is neither a file nor a zoo model (choose from vgg11"),
    (["train", "conv", "--dataset", "svhn"], "argument --dataset: invalid choice: 'svhn' (choose from 'cifar10'"),
    (["demo", "--skip", "everything"], "argument --skip: invalid choice: 'everything' (choose from 'collapse'"),
    (["bench", "missing.onnx"], "argument FILE: 'missing.onnx' does not exist"),
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
    assert needs == {"random": False, "magnitude": False, "snip": True, "grasp": True, "synflow": False,
                     "itersnip": True, "force": True}
    assert {c["name"]: c["default_iterations"] for c in blob["criteria"]}["synflow"] == 100
    assert blob["models"] == list_models()
    assert {d["name"] for d in blob["datasets"]} == {"mnist1d", "digits", "cifar10", "cifar100"}


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


# --------------------------------------------------------------------------- end to end (subprocess)
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


def test_prune_train_export_bench_end_to_end(tmp_path):
    pruned, trained = tmp_path / "p.pt", tmp_path / "t.pt"
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

    result = run_cli("train", str(pruned), "--dataset", "digits", "--epochs", "2", "--lr", "3e-3",
                     "-o", str(trained), "--json", str(tmp_path / "t.json"), "--threads", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
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
    result = run_cli("export", str(trained), "-o", str(onnx_path), "--no-compact", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert onnx_path.stat().st_size > 0
    result = run_cli("export", str(trained), "-o", str(onnx_path), "--no-compact")
    assert result.returncode == 2 and "overwrite" in result.stderr
    result = run_cli("bench", str(onnx_path), str(trained), "--batch-sizes", "1,4", "--repeat", "2",
                     "--warmup", "1", "--json", str(tmp_path / "b.json"), "--no-progress")
    assert result.returncode == 0, result.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    assert [m["name"] for m in bench["models"]] == ["t", "t.pt"]
    assert bench["settings"]["batch_sizes"] == [1, 4]
    assert all(set(m["latency"]) == {"1", "4"} for m in bench["models"])
    assert bench["models"][1]["nonzeros"] <= kept + sum(v.numel() for k, v in after["state_dict"].items()
                                                         if k.endswith("bias"))


def test_prune_data_driven_and_user_factory(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def make(hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
    )
    out = tmp_path / "u.pt"
    result = run_cli("prune", "mynets:make", "--model-option", "hidden=16", "--dataset", "digits", "-c", "snip",
                     "--compression", "4", "--calibration-per-class", "2", "-o", str(out), "--threads", "1",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    blob = torch.load(out, weights_only=True)
    assert blob["model"]["spec"] == "mynets:make" and blob["model"]["options"] == {"hidden": 16}
    assert blob["model"]["input_shape"] == [1, 8, 8]
    assert blob["pruning"]["calibration_per_class"] == 2
    size = 64 * 16 + 16 * 10
    assert sum(int(m.sum()) for m in blob["masks"].values()) == size - round(0.75 * size)


def test_collapse_command_json(tmp_path):
    result = run_cli("collapse", "mlp", "--input-shape", "1,16", "--model-option", "depth=3",
                     "--model-option", "width=16", "--criteria", "synflow,magnitude", "--max-exponent", "3",
                     "--step", "0.5", "--iterations", "10", "--json", str(tmp_path / "c.json"), "--threads", "1")
    assert result.returncode == 0, result.stderr
    blob = json.loads((tmp_path / "c.json").read_text())
    grid = {0.5 * k for k in range(7)}
    for name in ("synflow", "magnitude"):
        info = blob["criteria"][name]
        assert all(p["exponent"] in grid for p in info["points"])
        assert info["critical_exponent"] is None or info["critical_exponent"] in grid
        assert info["paper_exponent"] is None  # the paper's values are for VGG-16-BN only
    assert blob["criteria"]["synflow"]["critical_exponent"] >= blob["criteria"]["magnitude"]["critical_exponent"]
    assert "synflow" in result.stdout and "magnitude" in result.stdout


def test_demo_tiny_writes_report_pictures_and_json(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--tiny", "--out", str(out), "--threads", "1", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
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

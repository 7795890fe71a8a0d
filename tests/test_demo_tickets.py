"""The demo's tickets experiment (GemMiner, IMP, SynFlow, SNIP, random, dense) on its tiny grid."""

from __future__ import annotations

import json
import math

import pytest

from synflow_plugin import PruningError, demo
from synflow_plugin.demo import EXPERIMENTS, run_demo, settings_for

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    out = tmp_path_factory.mktemp("tickets")
    lines: list[str] = []
    results = run_demo(out, mode="tiny", skip=[e for e in EXPERIMENTS if e != "tickets"], threads=1,
                       progress=False, log=lines.append)
    return out, results, lines


def test_the_ticket_options_come_from_the_capabilities():
    s = settings_for("full")
    # IMP is trained with a train_fn, GemMiner on the training set; the others get nothing
    assert demo._ticket_options(s) == {"imp": {"rate": 0.5}, "gemminer": {"epochs": 5, "iterations": 10}}
    assert s.tickets_densities[-1] == 0.01 and len(s.tickets_seeds) == 3
    assert set(s.tickets_datasets) == {"digits", "mnist1d"}
    # the newer criteria are in the accuracy experiment of every mode but the tests' tiny one;
    # ProsPr (about a minute per VGG-16-BN prune) in the collapse sweep of the full mode only,
    # NTK-SAP (seeded: one sweep per seed, ~27 s per prune) in none
    quick = settings_for("quick")
    for mode in (s, quick):
        assert set(demo.NEWER_CRITERIA) <= set(mode.accuracy_criteria)
        assert "phew" in mode.collapse_criteria and "ntksap" not in mode.collapse_criteria
    assert "prospr" in s.collapse_criteria and "prospr" not in quick.collapse_criteria


def test_tickets_run_and_write_their_figure_table_and_report(tickets):
    out, results, lines = tickets
    s = settings_for("tiny")
    t = results["tickets"]
    assert set(results) >= {"tickets"} and not {"collapse", "accuracy", "sanity", "export"} & set(results)
    assert results["pictures"] == ["tickets.png"] and (out / "tickets.png").read_bytes()[:8] == PNG
    info = t["datasets"]["digits"]
    assert info["failed"] == []
    # one sweep per data set, its records in the sweep's own file
    swept = json.loads((out / info["folder"] / "results.json").read_text())
    assert swept["format"] == "synflow-plugin sweep"
    assert [r["trial"] for r in swept["records"]] == [r["trial"] for r in info["records"]]
    assert len(info["records"]) == len(s.tickets_seeds) * (1 + len(s.tickets_criteria) * len(s.tickets_densities))

    rows = {(r["criterion"], round(r["density"], 6)): r for r in info["summary"]}
    for criterion in s.tickets_criteria:
        for density in s.tickets_densities:
            row = rows[(criterion, density)]
            assert row["seeds"] == len(s.tickets_seeds) and 0.0 <= row["mean_accuracy"] <= 1.0
            assert row["mean_seconds"] > 0  # every ticket takes time to find, even random's
    for record in info["records"]:
        if record["criterion"] != "dense":  # exact global top-k: the density asked for
            assert record["density"] == pytest.approx(record["compression"] ** -1, abs=1e-3)
    assert rows[("dense", 1.0)]["mean_accuracy"] > 0.2  # well above chance (10%) after 1 epoch

    # IMP at rate 0.5: ceil(log d / log 0.5) levels, 2 at 25% and 4 at 10%, each a training
    (imp,) = t["trains_with_train_fn"]
    assert [rows[(imp, d)]["rounds"] for d in s.tickets_densities] == [
        [math.ceil(math.log(d) / math.log(1 - s.imp_rate))] for d in s.tickets_densities] == [[2], [4]]
    assert rows[(imp, 0.1)]["mean_seconds"] > rows[(imp, 0.25)]["mean_seconds"]  # 4 trainings vs 2
    (gem,) = t["trains_on_training_set"]
    assert all(rows[(gem, d)]["rounds"] == [s.gemminer_iterations] for d in s.tickets_densities)

    table = (out / "tickets.md").read_text()
    assert f"| {imp} (rate 0.5: 2/4 levels) |" in table and "| dense (100%) |" in table
    assert "| ticket | 25% | 10% |" in table and "Wall time to find each ticket" in table
    report = (out / "report.md").read_text()
    assert "## 5. Tickets at initialisation" in report and table.strip() in report
    assert any(line.startswith("[tickets] digits") for line in lines)


def test_the_report_is_redrawn_from_results_json(tickets):
    out, _, _ = tickets
    report = (out / "report.md").read_text()
    (out / "tickets.png").unlink()
    demo.render_demo(out)
    assert (out / "report.md").read_text() == report
    assert (out / "tickets.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("content, words", [
    ('{"x": 1}', "it has no 'settings' mapping"),
    ("[1, 2]", "it has no 'settings' mapping"),
    ("{", "not JSON"),
    ('{"settings": {}}', "TypeError"),
])
def test_a_foreign_results_file_is_refused_not_rendered(tmp_path, content, words):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(PruningError, match=f"is not the results file of a finished demo .*{words}"):
        demo.render_demo(tmp_path)

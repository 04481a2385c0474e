"""Logs that read well: plain progress lines without a terminal, `list` output that scripts can parse, 80 columns."""

from __future__ import annotations

import json
import re

import pytest

import csfl_fabric
from csfl_fabric.cli import main
from csfl_fabric.registry import AGGREGATORS, SELECTORS
from tests.conftest import SMOKE


def test_without_a_terminal_progress_is_a_plain_line_every_n_rounds(smoke: list[str], capsys) -> None:
    # capsys' stdout is not a terminal, as in a log file or a SLURM job.
    overrides = ["logging.progress=true", "rounds.num_rounds=5", "logging.progress_every=2"]
    result = csfl_fabric.run(SMOKE, [*smoke, *overrides])
    lines = capsys.readouterr().out.splitlines()
    rounds = [int(m.group(1)) for line in lines if (m := re.search(r"round (\d+)/5 ", line))]
    assert rounds == [1, 2, 4, 5]  # the first round, every second one, the last
    accs = [float(re.search(r"acc (\d\.\d+)", line).group(1)) for line in lines if "round " in line]
    assert accs == [pytest.approx(r["eval/acc"], abs=5e-4) for r in result.metrics if r["round"] + 1 in rounds]
    assert "finished 5/5 rounds" in lines[-1]
    assert f"best acc {result.summary['best_acc']:.3f}" in lines[-1]
    assert all("\x1b" not in line and "━" not in line for line in lines)  # no live bar, no escape codes


def test_list_json_and_plain_output(capsys) -> None:
    assert main(["list", "selectors", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in data["selectors"]["entries"]] == SELECTORS.names()
    assert data["selectors"]["entries"][0]["description"] == SELECTORS.describe(SELECTORS.names()[0])
    # Piped (no terminal), the default is one tab-separated record a line.
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines if line.startswith("aggregators\t")] == AGGREGATORS.names()
    assert all(len(line.split("\t")) == 3 for line in lines)


def test_tables_fit_80_columns_and_fold_instead_of_cutting(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["list", "selectors", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    assert all(name in out for name in SELECTORS.names())
    assert "https://arxiv.org/abs/2010.01243" in out.replace("│", "").replace(" ", "").replace("\n", "")


def test_the_compare_table_fits_80_columns_and_folds_long_labels(capsys, monkeypatch, tmp_path) -> None:
    from csfl_fabric.study import compare as compare_module
    from csfl_fabric.study.compare import ComparisonResult
    from csfl_fabric.study.records import Report

    label = "heuristic.size_proportional data.partition.name=shards train.lr=0.1"
    metrics = {"final_acc": (0.81234, 0.0456, 5), "best_acc": (0.9, 0.01, 5), "time_to_80pct": (123.4, 56.7, 5),
               "fair_participation_gini": (0.35, 1.27, 5), "wall_seconds": (0.0889, 0.366, 5)}
    report = Report(tmp_path, {label: metrics}, [], [], "simulated seconds", rounds={label: "40"})
    monkeypatch.setattr(compare_module, "compare",
                        lambda *a, **k: ComparisonResult(experiment_dir=tmp_path, runs=[], report=report))
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    lines = out.splitlines()
    header = next(line for line in lines if "method" in line and "seeds" in line)
    start, end = header.index("method"), header.index("seeds") - 1
    column = "".join(line[start:end] for line in lines[lines.index(header) + 2:]).replace(" ", "")
    assert column.startswith(label.replace(" ", ""))  # folded onto several lines, every character kept
    assert "0.812" in out
    assert "±0.0456" in out
    assert " 40 " in out

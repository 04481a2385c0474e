"""A study is its config: compare reuses only runs with its settings; report never pools runs that differ."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import csfl_fabric
from csfl_fabric.cli import main
from csfl_fabric.errors import ConfigError
from csfl_fabric.study.report import build_report
from csfl_fabric.study.settings import differing, label_variants, settings
from tests.conftest import SMOKE

METHODS = ["heuristic.random", "heuristic.pow_d"]


def test_settings_leave_out_what_does_not_change_results() -> None:
    tree = {"experiment": "x", "seed": 1, "logging": {"dir": "a"}, "checkpoint": {"keep": 2}, "memory": {"gc_every": 1},
            "resume": "auto", "compare": {"seeds": [0]}, "rounds": {"num_rounds": 5}, "train": {"lr": 0.1}}
    assert settings(tree) == {"seed": 1, "rounds.num_rounds": 5, "train.lr": 0.1}
    assert differing(settings(tree), settings({**tree, "rounds": {"num_rounds": 10}, "logging": {"dir": "b"}})) == [
        "rounds.num_rounds"]


def test_compare_refuses_a_run_made_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the case, a plain run in the experiment folder with other lr, partition and rounds.
    common = [f"logging.dir={tmp_path}", "experiment=x"]
    # (A plain run's default folder carries its config hash, so it cannot collide with a comparison's folder; a run
    # written to the comparison's folder name by hand, or an earlier comparison with other settings, can.)
    earlier = csfl_fabric.run(SMOKE, [*common, "train.lr=0.5", "data.partition.name=shards", "rounds.num_rounds=2"],
                              run_dir=tmp_path / "x" / "heuristic.random-seed0").run_dir
    before = (earlier / "metrics.csv").read_bytes()

    # Execute: a comparison whose seed-0 random run would land in the same directory.
    code = main(["compare", str(SMOKE), *common, "rounds.num_rounds=3", "--methods", ",".join(METHODS), "--seeds", "0"])

    # Assert: one line naming every differing key, nothing run or overwritten.
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    for key in ("data.partition.name", "rounds.num_rounds", "train.lr", "--new-study", str(tmp_path / "x-2")):
        assert key in err
    assert not (tmp_path / "x" / "heuristic.pow_d-seed0").exists()
    assert (earlier / "metrics.csv").read_bytes() == before

    # Execute: asked for a new study, it writes next to the old one; the same command again continues that one.
    overrides = [*common, "rounds.num_rounds=3"]
    first = csfl_fabric.compare(SMOKE, methods=METHODS, seeds=[0], overrides=overrides, new_study=True)
    again = csfl_fabric.compare(SMOKE, methods=METHODS, seeds=[0], overrides=overrides, new_study=True)
    assert first.experiment_dir == again.experiment_dir == tmp_path / "x-2"
    assert [a for _, a in first.runs] == ["ran", "ran"]
    assert [a for _, a in again.runs] == ["skipped", "skipped"]
    study = yaml.safe_load((tmp_path / "x-2" / "study.yaml").read_text())
    assert study["settings"]["rounds.num_rounds"] == 3
    assert "seed" not in study["settings"]
    assert not any(k.startswith("selector") for k in study["settings"])
    # The study file itself refuses a comparison with other settings, even for runs that do not exist yet.
    with pytest.raises(ConfigError, match=r"holds a study made with other settings: train.lr \(here 0.3"):
        csfl_fabric.compare(SMOKE, methods=["heuristic.round_robin"], seeds=[5], overrides=[
            f"logging.dir={tmp_path}", "experiment=x-2", "rounds.num_rounds=3", "train.lr=0.3"])


def test_report_groups_by_every_differing_setting(tmp_path: Path) -> None:
    # Prepare: one folder with runs of two round counts, and pow-d at one of them only.
    def run(method: str, seed: int, rounds: int) -> None:
        csfl_fabric.run(SMOKE, [f"logging.dir={tmp_path}", f"selector.name={method}", f"seed={seed}",
                                f"rounds.num_rounds={rounds}", f"logging.run_name={method}-r{rounds}-seed{seed}"])

    for seed in (0, 1):
        run("heuristic.random", seed, 2)
        run("heuristic.random", seed, 3)
    run("heuristic.pow_d", 0, 3)

    # Execute
    report = build_report(tmp_path / "smoke", baseline="heuristic.random")

    # Assert: three rows, never pooled across round counts, named and with their rounds.
    labels = ["heuristic.pow_d rounds.num_rounds=3", "heuristic.random rounds.num_rounds=2",
              "heuristic.random rounds.num_rounds=3"]
    assert sorted(report.table) == labels
    assert report.varied == ["rounds.num_rounds"]
    assert {k: v["final_acc"][2] for k, v in report.table.items()} == dict(zip(labels, [1, 2, 2], strict=True))
    assert report.rounds == dict(zip(labels, ["3", "2", "3"], strict=True))
    # pow-d is paired with random at its own round count.
    test = next(t for t in report.tests if t["metric"] == "final_acc" and t["method"].startswith("heuristic.pow_d"))
    assert test["baseline"] == "heuristic.random rounds.num_rounds=3"
    assert test["n"] == 1
    md = (report.report_dir / "report.md").read_text()
    assert "Runs differ in `rounds.num_rounds`" in md
    assert "| heuristic.random rounds.num_rounds=2 | 2 | 2 |" in md
    with (report.report_dir / "summary.csv").open() as fh:
        assert {r["method"]: r["rounds"] for r in csv.DictReader(fh)} == report.rounds


def test_selector_params_split_a_method_but_not_two_methods() -> None:
    def rec(method: str, **params: float) -> SimpleNamespace:
        values = {"selector.name": method, **{f"selector.params.{k}": v for k, v in params.items()}, "train.lr": 0.1}
        return SimpleNamespace(method=method, point="", settings=values)

    records = [rec("heuristic.pow_d", d=4), rec("heuristic.pow_d", d=8), rec("heuristic.random")]
    assert label_variants(records) == ["selector.params.d"]
    assert [r.point for r in records] == ["selector.params.d=4", "selector.params.d=8", ""]
    # A sweep point already names its key (written as the user typed it, in shorthand).
    swept = [SimpleNamespace(method="m", point=f"train.lr={lr}", settings={"train.lr": lr}) for lr in (0.1, 0.2)]
    assert label_variants(swept) == ["train.lr"]
    assert [r.point for r in swept] == ["train.lr=0.1", "train.lr=0.2"]

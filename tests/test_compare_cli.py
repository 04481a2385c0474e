import json
import os
import subprocess
import sys
import time

import pytest
import wandb

import csfl_fabric
from csfl_fabric.cli import main
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.study.compare import run_status
from tests.conftest import REPO, SMOKE


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "csfl_fabric", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_interrupted_comparison_completes_without_redoing_finished_runs(tmp_path):
    # Prepare: runs long enough (~1-3 s each) to kill the comparison during its second run.
    args = ["compare", str(SMOKE), f"logging.dir={tmp_path}", "rounds.num_rounds=150", "--seeds", "0,1,2"]
    first, second, third = (tmp_path / "smoke" / f"heuristic.random-seed{s}" for s in (0, 1, 2))
    proc = _cli(*args)
    deadline = time.monotonic() + 240
    while run_status(first) != "success" and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert run_status(first) == "success"
    assert run_status(second) != "success"
    assert run_status(third) == "new"
    mtimes = {p: p.stat().st_mtime_ns for p in first.iterdir()}

    # Execute: the same command again.
    rerun = _cli(*args)
    out, _ = rerun.communicate(timeout=300)

    # Assert: the finished run was left alone, the others completed once each, and the report covers all three.
    assert rerun.returncode == 0, out
    assert {p: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes
    assert "skipped" in out
    assert "Report:" in out
    for run_dir in (second, third):
        assert run_status(run_dir) == "success"
        assert [int(r["round"]) for r in read_metrics(run_dir)] == list(range(150))
    assert "| heuristic.random | 3 |" in (tmp_path / "smoke" / "report" / "report.md").read_text()


def test_wandb_runs_share_a_group_with_method_job_type_tags_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = []
    real_init = wandb.init

    def spy(**kwargs):
        seen.append(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    result = csfl_fabric.compare(SMOKE, seeds=[0, 1], overrides=[f"logging.dir={tmp_path}", "rounds.num_rounds=2"])
    assert [(k["group"], k["job_type"], k["tags"]) for k in seen] == [
        ("smoke/heuristic.random", "heuristic.random", ["smoke", "heuristic.random", f"seed{s}"]) for s in (0, 1)]
    for spec, _ in result.runs:
        (offline,) = (spec.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        data = offline.read_bytes()
        summary = json.loads((spec.run_dir / "summary.json").read_text())
        for key in ("best_acc", "time_to_80pct_of_own_gain", "auc_acc_time"):
            assert key in summary
            assert key.encode() in data
        # The last round's Gini is in W&B's summary once, as the logged metric, not again as a study key.
        assert "fair_participation_gini" in summary
        assert b"fair/participation_gini" in data
        assert b"fair_participation_gini" not in data
        assert list(offline.parent.glob("files/media/table/select/clients*.table.json"))  # the selection table


def test_report_and_runs_commands(tmp_path, capsys):
    assert main(["compare", str(SMOKE), f"logging.dir={tmp_path}", "--seeds", "0,1", "rounds.num_rounds=2",
                 "--sweep", "train.lr=0.1,0.2", "rounds.clients_per_round=3"]) == 0
    exp = tmp_path / "smoke"
    assert sorted(p.name for p in exp.iterdir()) == [
        *(f"heuristic.random-train.lr={lr}-seed{s}" for lr in (0.1, 0.2) for s in (0, 1)), "report", "study.yaml"]
    # The single-valued "sweep" was applied as an override to every run.
    assert "clients_per_round: 3" in (exp / "heuristic.random-train.lr=0.2-seed1" / "config.yaml").read_text()
    (exp / "report" / "summary.csv").unlink()
    assert main(["report", str(exp), "--format", "pdf"]) == 0
    assert (exp / "report" / "summary.csv").exists()
    assert (exp / "report" / "accuracy_round.pdf").read_bytes().startswith(b"%PDF")
    (exp / "heuristic.random-train.lr=0.2-seed1" / "summary.json").unlink()  # as if killed mid-run
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("success") == 3
    assert out.count("unfinished") == 1
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(exp), "--baseline", "heuristic.rnadom"]) == 2
    assert "heuristic.rnadom` is not among the methods" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2

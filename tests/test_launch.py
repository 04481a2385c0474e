import json
import os

import pytest
from rich.console import Console

import csfl_fabric
from csfl_fabric.cli import main
from csfl_fabric.errors import ConfigError
from csfl_fabric.study.compare import plan, run_status
from csfl_fabric.study.launch import launch_settings, print_outcome, timeout_minutes
from csfl_fabric.study.progress import JobStatus, StudyView, tail_rows
from tests.conftest import REPO, SMOKE

METHODS = ["heuristic.random", "heuristic.pow_d"]
#: Files of a run that must not depend on how it was launched; summary.json differs only in its wall times and
#: its number of sessions (a preempted and requeued run has two).
IDENTICAL = ("metrics.csv", "selection.csv", "participation.csv", "study.json")


@pytest.fixture
def child_path(monkeypatch):
    # The runs' processes import this checkout (and tests.study_fakes), not some other installed copy.
    paths = [str(REPO), str(REPO / "callbacks"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def _summary_without_timing(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.pop("wall_seconds") > 0
    assert summary.pop("wall_seconds_session") > 0
    assert summary.pop("sessions") >= 1
    return summary


def test_launch_settings_and_bad_values(tmp_path):
    base, _ = plan(SMOKE, [f"logging.dir={tmp_path}"])
    assert launch_settings(base) == (1, base.launcher)
    n, launcher = launch_settings(base, jobs=3, launcher="submitit-local", wait=False,
                                  slurm={"partition": "gpu", "time": "2:00:00", "mem": None})
    assert (n, launcher.name, launcher.slurm.partition, launcher.slurm.time, launcher.wait) == (
        3, "submitit-local", "gpu", "2:00:00", False)
    assert launcher.slurm.mem is None
    with pytest.raises(ConfigError, match=r"`compare.jobs` to be >= 1 but got 0"):
        launch_settings(base, jobs=0)
    with pytest.raises(ConfigError, match=r"`launcher.name`.*local"):
        launch_settings(base, launcher="pbs")
    with pytest.raises(ConfigError, match=r"`launcher.slurm.time`.*'two hours'"):
        launch_settings(base, launcher="submitit-local", slurm={"time": "two hours"})
    assert timeout_minutes("0:0:30") == 1  # rounded up: SLURM's limits are whole minutes
    assert not any(tmp_path.iterdir())


def test_cli_rejects_bad_launch_options_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    args = ["compare", str(SMOKE), f"logging.dir={tmp_path / 'runs'}"]
    assert main([*args, "--jobs", "0"]) == 2
    assert "`compare.jobs` to be >= 1 but got 0" in capsys.readouterr().err
    assert main([*args, "--launcher", "slurm", "--slurm.time", "2:00:00"]) == 2
    assert "`sbatch` is not on PATH" in capsys.readouterr().err
    assert main([*args, "--launcher", "slurm", "--slurm.time", "soon"]) == 2
    assert "`launcher.slurm.time`" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_view_shows_each_running_jobs_round_and_last_accuracy(tmp_path):
    run = tmp_path / "heuristic.random-seed0"
    run.mkdir()
    # Evaluation every other round: the last row has no accuracy, the view shows the one before.
    (run / "metrics.csv").write_text("round,eval/acc,train/loss\n0,0.25,1.0\n1,0.5,0.9\n2,,0.8\n3,0.7")
    assert [r["round"] for r in tail_rows(run / "metrics.csv")] == ["0", "1", "2"]  # the last line is being written
    jobs = [JobStatus(run.name, run, 10, state="running", where="cuda:1"),
            JobStatus("b", tmp_path / "b", 10, state="done"), JobStatus("c", tmp_path / "c", 10, state="failed"),
            JobStatus("d", tmp_path / "d", 10, state="running")]
    console = Console(record=True, width=100, force_terminal=False)
    with StudyView("smoke", jobs, console) as view:
        assert view._live is None  # not a terminal: no live drawing
        console.print(view.render())
    text = console.export_text()
    assert "smoke: 1 done, 2 running, 1 failed (of 4)" in text
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.strip()}
    assert rows[run.name] == [run.name, "3/10", "0.500", "cuda:1"]
    assert rows["d"] == ["d", "0/10", "-"]
    assert "b" not in rows  # finished jobs are counted, not listed


@pytest.mark.slow
def test_two_jobs_give_the_same_run_files_as_one(tmp_path, child_path):
    # Prepare: a 2-method x 2-seed smoke study, once one run after another in this process, once 2 at a time.
    args = {"methods": METHODS, "seeds": [0, 1]}
    serial = csfl_fabric.compare(SMOKE, overrides=["rounds.num_rounds=2", f"logging.dir={tmp_path / 'a'}"], **args)
    # Execute
    parallel = csfl_fabric.compare(SMOKE, overrides=["rounds.num_rounds=2", f"logging.dir={tmp_path / 'b'}"],
                                   jobs=2, **args)
    # Assert
    assert not parallel.study.failed, [(j.name, j.error, j.log.read_text()[-3000:]) for j in parallel.study.failed]
    assert [a for _, a in parallel.runs] == ["ran"] * 4
    assert parallel.study.peak_memory > 0
    for (a, _), (b, _) in zip(serial.runs, parallel.runs, strict=True):
        assert a.run_dir.name == b.run_dir.name
        for name in IDENTICAL:
            assert (a.run_dir / name).read_bytes() == (b.run_dir / name).read_bytes(), name
        assert _summary_without_timing(a.run_dir) == _summary_without_timing(b.run_dir)
        assert (b.run_dir.parent / ".compare" / "logs" / f"{b.run_dir.name}.log").exists()
    assert parallel.report.table.keys() == serial.report.table.keys()


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others_and_a_rerun_redoes_only_it(tmp_path, child_path):
    # Prepare: the second run of a 2-job study raises in its first round.
    runs = tmp_path / "runs"
    failing = ["callbacks=[{target: 'tests.study_fakes:FailIn', params: {run: heuristic.random-seed1}}]"]
    common = ["rounds.num_rounds=2", f"logging.dir={runs}"]
    # Execute
    first = csfl_fabric.compare(SMOKE, seeds=[0, 1], overrides=[*common, *failing], jobs=2)
    # Assert: the failure is listed with its log; the other run finished and has its report.
    assert [(s.run_dir.name, a) for s, a in first.runs] == [("heuristic.random-seed0", "ran"),
                                                           ("heuristic.random-seed1", "failed")]
    (failed,) = first.study.failed
    assert "exit code 1" in failed.error
    assert "injected failure in heuristic.random-seed1" in failed.log.read_text()
    assert run_status(first.runs[0][0].run_dir) == "success"
    assert first.report.table["heuristic.random"]["final_acc"][2] == 1  # one seed so far
    console = Console(record=True, width=200, force_terminal=False)
    assert print_outcome(first.study, first.experiment_dir, console) == 1
    printed = console.export_text()
    assert f"log: {failed.log}" in printed
    assert "run the same command again" in printed
    # The same command without the injected failure: the finished run is skipped, the failed one resumes.
    mtimes = {p: p.stat().st_mtime_ns for p in first.runs[0][0].run_dir.iterdir()}
    again = csfl_fabric.compare(SMOKE, seeds=[0, 1], overrides=common, jobs=2)
    assert [a for _, a in again.runs] == ["skipped", "resumed"]
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}
    assert run_status(again.runs[1][0].run_dir) == "success"
    assert again.report.table["heuristic.random"]["final_acc"][2] == 2


@pytest.mark.slow
def test_submitit_jobs_run_a_study_and_a_preempted_job_resumes_from_its_checkpoint(tmp_path, child_path):
    pytest.importorskip("submitit")
    # Prepare: the reference, run in this process; then the same study as submitit jobs (the LocalExecutor goes
    # through the same pickling and process path as SLURM), one of them preempted in round 1 of 3.
    common = ["rounds.num_rounds=3", "checkpoint.every_n_rounds=0"]
    reference = csfl_fabric.compare(SMOKE, seeds=[0, 1], overrides=[*common, f"logging.dir={tmp_path / 'ref'}"])
    marker = tmp_path / "preempted"
    preempt = [f"callbacks=[{{target: 'tests.study_fakes:PreemptOnce', params: {{run: heuristic.random-seed1, "
               f"at: 1, marker: '{marker}'}}}}]"]
    # Execute
    result = csfl_fabric.compare(SMOKE, seeds=[0, 1], overrides=[*common, *preempt, f"logging.dir={tmp_path / 'b'}"],
                                 launcher="submitit-local")
    # Assert: both jobs finished; the preempted one was requeued by submitit and resumed from its checkpoint.
    assert [j.state for j in result.study.jobs] == ["done", "done"], [j.error for j in result.study.jobs]
    assert marker.exists()
    preempted = result.study.jobs[1]
    log = preempted.log.read_text()
    assert "Requeued job" in (preempted.log.with_suffix(".err")).read_text() + log
    assert "csfl-fabric: resumed" in log
    assert "csfl-fabric: resumed" not in result.study.jobs[0].log.read_text()
    for (a, _), (b, _) in zip(reference.runs, result.runs, strict=True):
        for name in IDENTICAL:
            assert (a.run_dir / name).read_bytes() == (b.run_dir / name).read_bytes(), (b.run_dir.name, name)
        assert _summary_without_timing(a.run_dir) == _summary_without_timing(b.run_dir)
    assert "job array" in result.study.note

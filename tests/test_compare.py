import csv
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy import stats

import csfl_fabric
from csfl_fabric.build import build_run
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.errors import ConfigError, UnknownNameError
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection import ClientSelector
from csfl_fabric.state import Selection
from csfl_fabric.study.compare import parse_sweep, plan, run_status
from tests.conftest import SMOKE

METHODS = ["heuristic.random", "test.lowest_ids"]


class LowestIds(ClientSelector):
    """Always the k available clients with the smallest ids (a deterministic, maximally unfair method)."""

    def select(self, ctx):
        return Selection(ids=np.asarray(ctx.available[: ctx.k], dtype=np.int64))


@pytest.fixture(scope="module")
def lowest_ids():
    SELECTORS.register("test.lowest_ids")(LowestIds)
    yield
    del SELECTORS._entries["test.lowest_ids"]  # keep the registry as other test modules expect it


@pytest.fixture(scope="module")
def comparison(lowest_ids, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cmp") / "runs"
    result = csfl_fabric.compare(SMOKE, methods=METHODS, seeds=[0, 1], overrides=[f"logging.dir={runs}"])
    return result, runs


def test_runs_of_one_seed_share_partition_and_initial_model(lowest_ids, tmp_path):
    # Prepare: the configs the comparison runs (nothing written).
    _, specs = plan(SMOKE, [f"logging.dir={tmp_path}", "systems.availability=bernoulli", "systems.availability_p=0.5"],
                    METHODS, [0, 1])
    assert [(s.method, s.seed) for s in specs] == [(m, s) for s in (0, 1) for m in METHODS]
    built = {(s.method, s.seed): build_run(s.config, run_dir=tmp_path / s.run_dir.name) for s in specs}

    def partition(run):
        store = run.orchestrator.store
        return [store.client(c, 0).indices.tolist() for c in range(store.num_clients)]

    def availability(run):
        return [run.orchestrator.systems.available(r).tolist() for r in range(5)]

    for seed in (0, 1):
        a, b = built[(METHODS[0], seed)], built[(METHODS[1], seed)]
        assert partition(a) == partition(b)
        assert availability(a) == availability(b)
        for key, value in a.orchestrator.global_params.items():
            assert torch.equal(value, b.orchestrator.global_params[key])
        assert a.orchestrator.selector_key != b.orchestrator.selector_key
    # Different seeds do differ, so the equalities above are not vacuous.
    assert partition(built[(METHODS[0], 0)]) != partition(built[(METHODS[0], 1)])
    assert availability(built[(METHODS[0], 0)]) != availability(built[(METHODS[0], 1)])


def test_comparison_writes_fixed_paired_run_dirs(comparison):
    result, runs = comparison
    assert [a for _, a in result.runs] == ["ran"] * 4
    for spec, _ in result.runs:
        assert spec.run_dir == runs / "smoke" / f"{spec.method}-seed{spec.seed}"
        assert run_status(spec.run_dir) == "success"
    initial = {(s.method, s.seed): json.loads((s.run_dir / "study.json").read_text())["initial_acc"]
               for s, _ in result.runs}
    assert initial[(METHODS[0], 0)] == initial[(METHODS[1], 0)] != initial[(METHODS[0], 1)]
    # The deterministic method selects clients 0..3 every round.
    lowest = runs / "smoke" / "test.lowest_ids-seed0" / "selection.csv"
    assert lowest.read_text().splitlines()[1:] == [f"{r},0 1 2 3" for r in range(3)]


def test_report_numbers_match_the_runs_metrics(comparison):
    result, runs = comparison
    with (result.report.report_dir / "summary.csv").open() as fh:
        table = {row["method"]: row for row in csv.DictReader(fh)}
    assert set(table) == set(METHODS)
    for method in METHODS:
        rows = [read_metrics(runs / "smoke" / f"{method}-seed{s}") for s in (0, 1)]
        final = [r[-1]["eval/acc"] for r in rows]
        up = [sum(row["cost/bytes_up"] for row in r) for r in rows]
        assert float(table[method]["final_acc_mean"]) == pytest.approx(np.mean(final))
        half = stats.t.ppf(0.975, 1) * np.std(final, ddof=1) / math.sqrt(2)
        assert float(table[method]["final_acc_ci95"]) == pytest.approx(half)
        assert float(table[method]["cost_bytes_up_total_mean"]) == pytest.approx(np.mean(up))
        assert float(table[method]["best_acc_mean"]) == pytest.approx(np.mean([max(x["eval/acc"] for x in r)
                                                                               for r in rows]))
    # logreg on 64 features x 10 classes in float32, 4 clients a round, 3 rounds
    assert float(table["heuristic.random"]["cost_bytes_up_total_mean"]) == (64 * 10 + 10) * 4 * 4 * 3
    assert float(table["test.lowest_ids"]["fair_participation_gini_mean"]) == pytest.approx(0.6)


def test_report_has_the_paired_tests_and_plots(comparison):
    result, runs = comparison
    tests = {t["metric"]: t for t in result.report.tests}
    a = [json.loads((runs / "smoke" / f"test.lowest_ids-seed{s}" / "summary.json").read_text())["final_acc"]
         for s in (0, 1)]
    b = [json.loads((runs / "smoke" / f"heuristic.random-seed{s}" / "summary.json").read_text())["final_acc"]
         for s in (0, 1)]
    assert tests["final_acc"]["method"] == "test.lowest_ids"
    assert tests["final_acc"]["n"] == 2
    assert tests["final_acc"]["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert tests["final_acc"]["p_holm"] == pytest.approx(tests["final_acc"]["p"])  # one comparison per metric
    md = (result.report.report_dir / "report.md").read_text()
    assert "paired t-test" in md
    assert "Holm" in md
    assert "| test.lowest_ids | 2 |" in md
    names = sorted(p.name for p in result.report.plots)
    # With the simulated clock in metrics.csv there is also accuracy over simulated time.
    assert names == ["accuracy_round.png", "accuracy_time.png", "participation.png", "train_loss.png"]
    assert result.report.time_unit == "simulated seconds"
    for path in result.report.plots:
        image = imread(path)
        assert image.shape[0] > 100
        assert image.shape[1] > 100
        assert image.std() > 0.01


def test_rerun_skips_finished_runs_and_report_rebuilds_as_svg(comparison, tmp_path):
    result, runs = comparison
    mtimes = {p: p.stat().st_mtime_ns for spec, _ in result.runs for p in spec.run_dir.iterdir()}
    again = csfl_fabric.compare(SMOKE, methods=METHODS, seeds=[0, 1], overrides=[f"logging.dir={runs}"],
                                fmt="svg", test="wilcoxon")
    assert [a for _, a in again.runs] == ["skipped"] * 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}
    assert all(p.suffix == ".svg" and p.read_text().lstrip().startswith("<?xml") for p in again.report.plots)
    assert "Wilcoxon" in (again.report.report_dir / "report.md").read_text()


def test_sweep_is_a_cartesian_product_of_run_dirs(tmp_path):
    assert parse_sweep(["train.lr=0.1,0.2"]) == {"train.lr": ["0.1", "0.2"]}
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_sweep(["train.lr"])
    _, specs = plan(SMOKE, [f"logging.dir={tmp_path}"], ["heuristic.random"], [0],
                    {"train.lr": [0.1, 0.2], "data.partition.alpha": [0.5, 1.0]})
    assert [s.run_dir.name for s in specs] == [
        f"heuristic.random-train.lr={lr}-data.partition.alpha={a}-seed0" for lr in (0.1, 0.2) for a in (0.5, 1.0)]
    assert [(s.config.train.lr, s.config.data.partition.params["alpha"]) for s in specs] == [
        (0.1, 0.5), (0.1, 1.0), (0.2, 0.5), (0.2, 1.0)]
    assert specs[3].config.logging.tags == ["heuristic.random", "seed0", "train.lr=0.2", "data.partition.alpha=1.0"]


def test_compare_block_in_yaml_gives_the_defaults(tmp_path):
    config = {"experiment": "blk", "rounds": {"num_rounds": 2, "clients_per_round": 2}, "data": {"num_clients": 4},
              "train": {"model": "logreg"}, "logging": {"dir": str(tmp_path), "wandb": "disabled", "progress": False},
              "compare": {"methods": ["heuristic.random"], "seeds": [3, 4], "sweep": {"train.lr": [0.1, 0.2]}}}
    _, specs = plan(config)
    assert [(s.seed, s.config.train.lr) for s in specs] == [(3, 0.1), (4, 0.1), (3, 0.2), (4, 0.2)]
    with pytest.raises(ConfigError, match="compare.test"):
        plan({**config, "compare": {"test": "anova"}})


def test_a_bad_method_fails_before_anything_runs(tmp_path):
    with pytest.raises(UnknownNameError, match="heuristic.random"):
        csfl_fabric.compare(SMOKE, methods=["heuristic.random", "heuristic.rnadom"],
                            overrides=[f"logging.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="baseline"):
        csfl_fabric.compare(SMOKE, baseline="heuristic.pow_d", overrides=[f"logging.dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_isolated_runs_match_in_process_runs(tmp_path):
    inproc = csfl_fabric.compare(SMOKE, seeds=[0], overrides=["rounds.num_rounds=2", f"logging.dir={tmp_path / 'a'}"])
    isolated = csfl_fabric.compare(SMOKE, seeds=[0], overrides=["rounds.num_rounds=2", f"logging.dir={tmp_path / 'b'}"],
                                   isolate=True)
    (a, _), (b, _) = inproc.runs[0], isolated.runs[0]
    assert (a.run_dir / "metrics.csv").read_bytes() == (b.run_dir / "metrics.csv").read_bytes()
    assert (a.run_dir / "selection.csv").read_bytes() == (b.run_dir / "selection.csv").read_bytes()

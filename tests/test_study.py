import json

import numpy as np
import pytest
import torch

import csfl_fabric
from csfl_fabric.build import build_dataset, build_run
from csfl_fabric.callbacks.study import ParticipationStats, labels_present, read_selection
from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.checkpoint import load_checkpoint
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.models import forward_flops_per_sample
from csfl_fabric.study.metrics import gini, normalized_entropy, participation_variance
from tests.conftest import SMOKE


def test_per_round_study_metrics_by_hand(smoke):
    # Prepare/Execute: the smoke run (digits, 10 clients, 4 a round, logreg 64 -> 10, one local epoch).
    result = csfl_fabric.run(SMOKE, smoke)
    dataset, parts = build_dataset(result.config)
    labels = dataset.y_train.numpy()
    selection = read_selection(result.run_dir)
    info = json.loads((result.run_dir / "study.json").read_text())

    # Assert: model bytes and FLOPs of a 64 x 10 linear layer in float32.
    assert info["model_bytes"] == (64 * 10 + 10) * 4
    assert info["forward_flops_per_sample"] == 2 * 64 * 10
    counts = np.zeros(10)
    up_total = 0.0
    for row, (r, ids) in zip(result.metrics, selection, strict=True):
        assert row["round"] == r
        counts[ids] += 1
        samples = sum(len(parts[c]) for c in ids)
        assert row["cost/flops"] == 3 * 2 * 64 * 10 * samples
        assert row["cost/bytes_down"] == row["cost/bytes_up"] == info["model_bytes"] * len(ids)
        up_total += row["cost/bytes_up"]
        assert row["cost/bytes_up_total"] == up_total
        assert row["fair/participation_gini"] == pytest.approx(gini(counts))
        assert row["fair/participation_entropy"] == pytest.approx(normalized_entropy(counts))
        covered = np.unique(np.concatenate([labels[parts[c]] for c in ids]))
        assert row["fair/label_coverage"] == pytest.approx(len(covered) / len(np.unique(labels)))
    assert result.summary["cost_bytes_up_total"] == up_total
    assert result.summary["initial_acc"] == info["initial_acc"]


def test_participation_stats_follow_the_full_recomputation():
    """Updated with the changed clients only, round after round (duplicates and idle rounds included): the Gini
    bit for bit, variance and entropy to float rounding."""
    rng = np.random.default_rng(0)
    counts = np.zeros(50, dtype=np.int64)
    stats = ParticipationStats(counts)
    for r in range(40):
        ids = rng.choice(50, size=rng.integers(0, 8), replace=bool(r % 2))
        np.add.at(counts, ids, 1)
        stats.update(counts, ids)
        m = stats.metrics()
        assert m["fair/participation_gini"] == gini(counts)
        assert m["fair/participation_var"] == pytest.approx(participation_variance(counts), rel=1e-12, abs=1e-15)
        assert m["fair/participation_entropy"] == pytest.approx(normalized_entropy(counts), rel=1e-12, nan_ok=True)
    assert ParticipationStats(counts).metrics() == stats.metrics()  # a resume rebuilds the same from the counts


def test_labels_present_by_hand():
    # Labels 3, 7 and 9 (columns 0, 1, 2); client 1 holds nothing, client 2 one class twice.
    y = torch.tensor([7, 3, 9, 9, 7, 3])
    parts = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([2, 3]), np.array([5, 4, 2])]
    store = ClientStore(torch.zeros(6, 2), y, parts, seed=0)
    expected = [[True, True, False], [False, False, False], [False, False, True], [True, True, True]]
    for clients_at_once in (1, 3, 2**16):  # blocks of clients: every boundary case
        assert labels_present(store, clients_at_once).tolist() == expected


def test_forward_flops_of_a_small_mlp():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert forward_flops_per_sample(model, torch.zeros(5, 8)) == 2 * 8 * 4 + 2 * 4 * 2
    assert model.training  # restored


def test_a_resumed_run_continues_totals_and_selection_log(smoke):
    # Prepare: a finished 3-round run, then the same run directory rebuilt and set back to round 2, as a
    # checkpoint resume does (state restored, CSV rows of later rounds dropped) before `on_run_start`.
    first = csfl_fabric.run(SMOKE, [*smoke, "checkpoint.every_n_rounds=1", "checkpoint.keep=5"])
    rows = first.metrics
    run = build_run(first.config, run_dir=first.run_dir)
    run.orchestrator.load_state_dict(load_checkpoint(first.run_dir / "checkpoints" / "round-000002.pt")["state"])
    for logger in run.fabric.loggers:
        logger.truncate(2)

    # Execute: the last round again.
    run.orchestrator.run()

    # Assert: two kept selection rows plus one new one, totals continued from round 1, no second initial eval.
    selection = read_selection(first.run_dir)
    assert [r for r, _ in selection] == [0, 1, 2]
    again = read_metrics(first.run_dir)
    assert again[:2] == rows[:2]
    assert again[2]["cost/bytes_up_total"] == rows[1]["cost/bytes_up_total"] + again[2]["cost/bytes_up"]
    counts = np.zeros(10)
    for _, ids in selection:
        counts[ids] += 1
    assert again[2]["fair/participation_gini"] == pytest.approx(gini(counts))
    assert json.loads((first.run_dir / "summary.json").read_text())["initial_acc"] == first.summary["initial_acc"]


def test_a_list_of_target_accuracies_gives_rounds_and_time_to_each(smoke):
    result = csfl_fabric.run(SMOKE, [*smoke, "rounds.target_accuracy=[0.99,0.05]"])
    rows = result.metrics
    first = next(r for r in rows if r["eval/acc"] >= 0.05)
    assert result.summary["rounds_to_acc_0.05"] == first["round"] + 1
    assert result.summary["time_to_acc_0.05"] == first["time/sim_total_s"]
    assert "time_to_acc_0.99" not in result.summary  # not reached: censored, left out of summary.json
    assert result.summary["rounds_to_target"] == first["round"] + 1  # the lowest target

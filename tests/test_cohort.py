"""The cohort backend against the sequential trainer: same params, losses and counts on dropout-free models."""

from __future__ import annotations

import csv
import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from csfl_fabric.aggregation import FedAvg
from csfl_fabric.api import run
from csfl_fabric.data.store import ClientStore
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.errors import ConfigError
from csfl_fabric.models import cnn
from csfl_fabric.training.cohort import CohortTrainer, _Plan, split_rows
from csfl_fabric.training.sequential import ClientTrainer, TrainSettings
from tests.conftest import SMOKE
from tests.test_orchestrator import Recorder

SIZES = (25, 7, 13, 1, 18)  # uneven: partial last batches, a one-sample client, different step counts


def _store(device: str = "cpu") -> ClientStore:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 1, 8, 8, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    bounds = np.cumsum((0, *SIZES))
    return ClientStore(x, y, [np.arange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)], seed=3, device=device)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return cnn((1, 8, 8), 4, width=4, hidden=16)  # convs, pooling, linear layers: what vmap must get right


def _fit_all(trainer: ClientTrainer, store: ClientStore) -> list[tuple[dict[str, torch.Tensor], object]]:
    start = trainer.global_params()
    clients = [store.client(c, round_idx=1) for c in range(store.num_clients)]
    return [({k: v.clone() for k, v in p.items()}, r) for p, r in trainer.fit_many(start, clients)]


def _compare(settings: TrainSettings, cohort_size: int = 64, device: str = "cpu", precision: str = "32-true",
             atol: float = 1e-5, split_cost: float | None = None) -> None:
    store = _store(device)
    fabric = Fabric(accelerator=device, devices=1, precision=precision)  # type: ignore[arg-type]
    sequential = _fit_all(ClientTrainer(fabric, _model(), settings, 4), store)
    cohort = _fit_all(CohortTrainer(fabric, _model(), settings, 4, cohort_size=cohort_size, split_cost=split_cost),
                      store)
    assert len(cohort) == len(sequential) == len(SIZES)
    for (p_seq, r_seq), (p_co, r_co) in zip(sequential, cohort, strict=True):
        assert r_co.client_id == r_seq.client_id  # type: ignore[attr-defined]
        for field in ("num_samples", "num_steps", "samples_processed"):
            assert getattr(r_co, field) == getattr(r_seq, field), field
        assert r_co.loss == pytest.approx(r_seq.loss, rel=atol, abs=atol)  # type: ignore[attr-defined]
        assert r_co.loss_sq_sum == pytest.approx(r_seq.loss_sq_sum, rel=atol, abs=atol)  # type: ignore[attr-defined]
        for k in p_seq:
            torch.testing.assert_close(p_co[k], p_seq[k], atol=atol, rtol=atol, msg=k)


@pytest.mark.parametrize(
    "settings",
    [
        TrainSettings(batch_size=4, lr=0.1),
        TrainSettings(batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.01, local_epochs=2),
        TrainSettings(batch_size=5, lr=0.1, mu=0.5, local_epochs=2),
        TrainSettings(batch_size=4, lr=0.01, optimizer="adam", weight_decay=0.01, local_epochs=2),
        TrainSettings(batch_size=3, lr=0.05, momentum=0.5, local_steps=7),
        TrainSettings(batch_size=4, lr=0.5, clip_grad_norm=0.1),
    ],
    ids=["sgd", "momentum-wd-2epochs", "fedprox", "adam-wd", "local-steps", "clip"],
)
def test_cohort_matches_sequential(settings: TrainSettings) -> None:
    _compare(settings)


def test_chunks_smaller_than_the_round_match_too() -> None:
    _compare(TrainSettings(batch_size=4, lr=0.05, momentum=0.9), cohort_size=2)


@pytest.mark.parametrize(
    "settings",
    [TrainSettings(batch_size=5, lr=0.05, momentum=0.9, weight_decay=0.01, mu=0.5, local_epochs=2),
     TrainSettings(batch_size=5, lr=0.01, optimizer="adam", local_epochs=2)],
    ids=["momentum-wd-fedprox", "adam"],
)
def test_steps_cut_into_blocks_match_sequential(settings: TrainSettings) -> None:
    # split_cost 0: every distinct batch width of a later step is its own block, so the optimizer state of one
    # client is updated by different blocks from step to step; two epochs put partial batches mid-way.
    _compare(settings, split_cost=0.0)


def test_split_rows_minimises_padding_plus_calls() -> None:
    widths = [16, 16, 16, 9, 8, 3, 1]
    assert split_rows(widths, call_cost=0) == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]  # no padding at all
    assert split_rows(widths, call_cost=float("inf")) == [(0, 7)]
    # By hand, call_cost 16: one block 16 + 7*16 = 128; [16x3 | 9, 8 | 3, 1] 64 + 34 + 22 = 120;
    # [16x3 | 9, 8, 3, 1] 64 + 52 = 116.
    assert split_rows(widths, call_cost=16) == [(0, 3), (3, 7)]
    assert split_rows([], call_cost=16) == []
    rng = np.random.default_rng(0)
    for _ in range(20):  # against every way of cutting 8 rows (2^7)
        widths = sorted(rng.integers(1, 17, size=8).tolist(), reverse=True)
        cost = float(rng.choice([0, 4, 16, 64]))
        def total(blocks: list[tuple[int, int]], widths: list[int] = widths, cost: float = cost) -> float:
            return sum(cost + (z - a) * max(widths[a:z]) for a, z in blocks)
        cuts = [[0, *[i for i in range(1, 8) if mask >> (i - 1) & 1], 8] for mask in range(128)]
        best = min(total(list(zip(c, c[1:], strict=False))) for c in cuts)
        assert total(split_rows(widths, cost)) == best


def test_the_plan_puts_the_longest_clients_first_and_pads_little() -> None:
    """SIZES at batch 4: 7, 2, 4, 1 and 5 steps. The rows are the clients longest first, each step trains
    only the clients still training, and no block pads a batch it does not need to."""
    store = _store()
    clients = [store.client(c, 1) for c in range(store.num_clients)]
    plan = _Plan.of(clients, TrainSettings(batch_size=4), call_cost=0.0)
    assert plan.rows == [0, 3, 2, 4, 1]  # client 0 (7 steps) is row 0, client 4 (5 steps) row 1, ...
    assert plan.num_steps == [7, 5, 4, 2, 1]
    assert [sum(b.stop - b.start for b in blocks) for blocks in plan.steps] == [5, 4, 3, 3, 2, 1, 1]
    trained = sum(int(b.mask.sum()) for blocks in plan.steps for b in blocks)
    padded = sum(b.mask.numel() for blocks in plan.steps for b in blocks)
    # call_cost 0: no padded sample but in the first step, which is never cut: client 3's one sample is padded
    # to the others' 4.
    assert [len(blocks) for blocks in plan.steps[:2]] == [1, 2]
    assert trained == sum(SIZES)
    assert padded == sum(SIZES) + 3
    for t, blocks in enumerate(plan.steps):  # each block: its rows' own batches, as the sequential trainer takes them
        for b in blocks:
            for r in range(b.start, b.stop):
                expected = list(clients[plan.rows.index(r)].batch_indices(4))[t]
                assert b.index[r - b.start][b.mask[r - b.start]].tolist() == expected.tolist()


def test_rows_are_views_of_their_chunk_and_outlive_later_chunks() -> None:
    """A client's params are views of its chunk's stacked tensors, which later chunks do not overwrite."""
    store = _store()
    settings = TrainSettings(batch_size=4, lr=0.1)
    trainer = CohortTrainer(Fabric(accelerator="cpu", devices=1), _model(), settings, 4, cohort_size=2)
    start = trainer.global_params()
    clients = [store.client(c, 1) for c in range(store.num_clients)]
    kept = list(trainer.fit_many(start, clients))  # three chunks, no copies taken
    cloned = _fit_all(CohortTrainer(Fabric(accelerator="cpu", devices=1), _model(), settings, 4, cohort_size=2), store)
    for (row, _), (copy, _) in zip(kept, cloned, strict=True):
        assert list(row) == list(start)
        for k in row:
            torch.testing.assert_close(row[k], copy[k], rtol=0, atol=0)
            assert row[k].data_ptr() == row.chunk[k][row.index].data_ptr()


def test_a_chunk_is_freed_once_the_aggregator_has_folded_it_in() -> None:
    """At most two chunks' params exist at once: a chunk goes when the next one's first row is aggregated."""
    store = _store()
    trainer = CohortTrainer(Fabric(accelerator="cpu", devices=1), _model(), TrainSettings(batch_size=4, lr=0.1), 4,
                            cohort_size=2)
    start = trainer.global_params()
    aggregator = FedAvg()
    aggregator.reset(start)
    chunks: list[weakref.ref[torch.Tensor]] = []
    for params, result in trainer.fit_many(start, [store.client(c, 1) for c in range(store.num_clients)]):
        tensor = params.chunk["fc1.weight"]  # type: ignore[attr-defined]
        if not chunks or chunks[-1]() is not tensor:
            chunks.append(weakref.ref(tensor))
        del tensor
        aggregator.update(params, result.num_samples)
        del params
        assert all(ref() is None for ref in chunks[:-1])  # every earlier chunk: folded in and gone
    assert len(chunks) == 3
    aggregator.compute()
    gc.collect()
    assert chunks[-1]() is None


def test_finished_clients_do_not_move() -> None:
    # Momentum + weight decay would keep moving a client after its last step if the update were not gated.
    store = _store()
    fabric = Fabric(accelerator="cpu", devices=1)
    settings = TrainSettings(batch_size=25, lr=0.1, momentum=0.9, weight_decay=0.1)
    trainer = CohortTrainer(fabric, _model(), settings, 4)
    start = trainer.global_params()
    alone = {k: v.clone() for k, v in trainer.fit(start, store.client(3, 1))[0].items()}  # 1 sample, 1 step
    together = [p for p, _ in trainer.fit_many(start, [store.client(3, 1), store.client(0, 1)])]  # 1 vs 1 steps
    long_settings = TrainSettings(batch_size=2, lr=0.1, momentum=0.9, weight_decay=0.1)  # client 0: 13 steps
    trainer_long = CohortTrainer(fabric, _model(), long_settings, 4)
    beside_long = next(trainer_long.fit_many(start, [store.client(3, 1), store.client(0, 1)]))[0]
    for k in alone:
        torch.testing.assert_close(together[0][k], alone[k])
        torch.testing.assert_close(beside_long[k], alone[k])


def test_a_block_of_one_client_runs_unbatched_and_matches_sequential() -> None:
    # Client 0 (25 samples, batch 4) trains alone from step 5 on; a chunk of one client is alone from the start.
    # Those blocks must not reach vmap (which costs a one-client call ~50% more) and must still train the same.
    store = _store()
    fabric = Fabric(accelerator="cpu", devices=1)
    settings = TrainSettings(batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.01)
    trainer = CohortTrainer(fabric, _model(), settings, 4)
    batched = dict(trainer._grad_step)
    widths: list[int] = []

    def only_several(stacked: bool):  # noqa: ANN202 - the vmapped step, refusing blocks of one row
        def call(params, buffers, x, y, mask):  # noqa: ANN001, ANN202
            assert len(x) > 1, "a block of one client reached vmap"
            widths.append(len(x))
            return batched[stacked](params, buffers, x, y, mask)
        return call

    trainer._grad_step = {stacked: only_several(stacked) for stacked in (False, True)}
    start = trainer.global_params()
    clients = [store.client(c, round_idx=1) for c in range(store.num_clients)]
    cohort = [({k: v.clone() for k, v in p.items()}, r) for p, r in trainer.fit_many(start, clients)]
    alone = {k: v.clone() for k, v in trainer.fit(start, clients[0])[0].items()}
    assert max(widths, default=0) == len(SIZES)  # the blocks of several clients still went through vmap
    sequential = _fit_all(ClientTrainer(fabric, _model(), settings, 4), store)
    for (p_co, r_co), (p_seq, r_seq) in zip(cohort, sequential, strict=True):
        assert r_co.loss == pytest.approx(r_seq.loss, rel=1e-5, abs=1e-5)
        for k in p_seq:
            torch.testing.assert_close(p_co[k], p_seq[k], atol=1e-5, rtol=1e-5, msg=k)
    for k in alone:
        torch.testing.assert_close(alone[k], sequential[0][0][k], atol=1e-5, rtol=1e-5, msg=k)


def test_batchnorm_is_rejected_with_the_module_name() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 4))
    with pytest.raises(ConfigError, match=r"Module `1` \(BatchNorm2d\).*train.backend=sequential"):
        CohortTrainer(Fabric(accelerator="cpu", devices=1), model, TrainSettings(), 4)


def test_dropout_draws_different_masks_per_client() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    store = _store()
    trainer = CohortTrainer(Fabric(accelerator="cpu", devices=1), model, TrainSettings(batch_size=4, lr=0.1), 4)
    twin = store.client(0, 1)  # the same client twice: identical batches, so only dropout can tell them apart
    (p1, r1), (p2, r2) = list(trainer.fit_many(trainer.global_params(), [twin, twin]))
    assert np.isfinite([r1.loss, r2.loss]).all()
    assert not torch.equal(p1["1.weight"], p2["1.weight"])


def test_bf16_mixed_runs_close_to_sequential() -> None:
    _compare(TrainSettings(batch_size=4, lr=0.05), precision="bf16-mixed", atol=5e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("precision", "atol"), [("32-true", 1e-4), ("bf16-mixed", 5e-2)])
@pytest.mark.parametrize("split_cost", [None, 0.0], ids=["steps-whole", "steps-cut"])
def test_cohort_matches_sequential_on_cuda(monkeypatch: pytest.MonkeyPatch, precision: str, atol: float,
                                           split_cost: float | None) -> None:
    # TF32 would round both backends' matmuls to 10 mantissa bits, far above the tolerance.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _compare(TrainSettings(batch_size=4, lr=0.05, momentum=0.9, mu=0.1, local_epochs=2), device="cuda",
             precision=precision, atol=atol, split_cost=split_cost)


def _metrics(tmp_path: Path, backend: str) -> list[dict[str, str]]:
    result = run(SMOKE, [f"logging.dir={tmp_path / backend}", f"train.backend={backend}", "train.cohort_size=3",
                         "train.momentum=0.5"])
    with open(result.run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_run_with_cohort_backend_matches_sequential_metrics(tmp_path: Path) -> None:
    seq, co = _metrics(tmp_path, "sequential"), _metrics(tmp_path, "cohort")
    assert len(seq) == len(co) == 3
    for a, b in zip(seq, co, strict=True):
        assert float(b["train/loss"]) == pytest.approx(float(a["train/loss"]), rel=1e-4)
        assert float(b["eval/acc"]) == pytest.approx(float(a["eval/acc"]), abs=1e-6)


def test_cohort_size_must_be_positive(smoke: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"`train.cohort_size` to be >= 1 but got 0"):
        run(SMOKE, [*smoke, "train.backend=cohort", "train.cohort_size=0"])


def test_client_hooks_fire_per_client_in_selection_order(smoke: list[str]) -> None:
    rec = Recorder()  # on_client_end also asserts that each result belongs to the client it is reported for
    run(SMOKE, [*smoke, "rounds.num_rounds=1", "rounds.clients_per_round=5", "train.backend=cohort",
                "train.cohort_size=2"], callbacks=[rec])
    names = [name for name, _ in rec.calls]
    assert names == ["on_run_start", "on_round_start", "on_selection",
                     *["on_client_start", "on_client_end"] * 5, "on_round_end", "on_run_end"]
    clients = [arg for name, arg in rec.calls if name in ("on_client_start", "on_client_end")]
    assert clients[0::2] == clients[1::2]
    assert len(set(clients)) == 5


@pytest.mark.parametrize("backend", ["sequential", "cohort"])
@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_a_cnn_run_in_bf16_learns_with_either_backend(smoke: list[str], backend: str, precision: str) -> None:
    """Half precision end to end: the study's FLOP count, flat weights in bf16, the norms, the aggregate."""
    result = run(SMOKE, [*smoke, "train.model=cnn", f"fabric.precision={precision}", f"train.backend={backend}"])
    accs = [float(m["eval/acc"]) for m in result.metrics]
    assert len(accs) == 3
    assert accs[-1] > 0.3  # 10 classes: well above chance after three rounds
    assert json.loads((result.run_dir / "study.json").read_text())["forward_flops_per_sample"] > 0
    assert all(p.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
               for p in result.params.values() if p.is_floating_point())

"""The memory policies in a tiny ``pl.Trainer`` run through `LightningMemoryPolicies`."""

from __future__ import annotations

import gc
from pathlib import Path

import lightning.pytorch as pl
import torch
from csfl_callbacks import GarbageCollect, MemoryMonitor, RamGuard
from csfl_callbacks.accounting import GIB, RamReading
from csfl_callbacks.lightning import LightningMemoryPolicies
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, *policies: object, epochs: int = 3) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[LightningMemoryPolicies(*policies)], default_root_dir=tmp_path,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Tiny(), data)
    return trainer


def test_policies_run_in_a_pl_trainer_and_log_their_figures(tmp_path: Path) -> None:
    readings: list[int] = []

    def reader() -> RamReading:
        readings.append(1)
        return RamReading(used=GIB, limit=8 * GIB, source="fake")

    guard, collect = RamGuard(threshold=0.9, reader=reader, client_interval_s=0), GarbageCollect(every_n_rounds=1)
    trainer = _fit(tmp_path, collect, guard, MemoryMonitor(reader=reader))
    # 4 batches x 3 epochs checked by the guard, plus its and the monitor's reading at each epoch's end.
    assert len(readings) == 12 + 3 + 3
    assert trainer.current_epoch == 3
    assert trainer.callback_metrics["mem/ram_frac"].item() == 0.125
    assert trainer.callback_metrics["mem/emergency_cleanups"].item() == 0
    assert "mem/process_gb" in trainer.callback_metrics
    assert gc.get_freeze_count() == 0  # frozen at train start, unfrozen at train end


def test_a_ram_guard_abort_stops_the_pl_trainer(tmp_path: Path) -> None:
    full = RamGuard(threshold=0.5, abort_threshold=0.9, reader=lambda: RamReading(95, 100, "fake"))
    trainer = _fit(tmp_path, full, epochs=5)
    assert trainer.current_epoch == 1  # stopped after the first epoch, not killed
    assert full.cleanups >= 1
    assert full.stop_reason.startswith("RamGuard: RAM at 95%")

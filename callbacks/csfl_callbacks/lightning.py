"""The memory policies as a `lightning.pytorch.Callback`, for ``pl.Trainer`` users.

    trainer = pl.Trainer(callbacks=[LightningMemoryPolicies(GarbageCollect(), RamGuard(0.7), MemoryMonitor())])

A training batch plays the part of a client and an epoch the part of a round: RamGuard checks after every
batch, the round policies run at each training epoch's end, their ``mem/*`` figures are logged with
``pl_module.log_dict``, and a policy's stop request sets ``trainer.should_stop``.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as e:  # installed without the extra
    raise ImportError("csfl_callbacks.lightning needs Lightning: pip install 'csfl-callbacks[lightning]' "
                      "(or `pip install lightning`).") from e
from typing_extensions import override

from csfl_callbacks.memory import MemoryPolicies, MemoryPolicy


class LightningMemoryPolicies(pl.Callback):
    """Drives memory policies from a ``pl.Trainer``'s fit loop.

    Args:
        *policies: e.g. ``GarbageCollect(1), EmptyCudaCache(5), RamGuard(0.7), MemoryMonitor()``.
        log: log the policies' ``mem/*`` figures once per epoch.
    """

    def __init__(self, *policies: MemoryPolicy, log: bool = True) -> None:
        self.policies = MemoryPolicies(*policies)
        self.log = log

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.policies.run_start()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.policies.run_end()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.policies.client_end()
        trainer.should_stop = trainer.should_stop or self.policies.should_stop

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, float] = {}
        self.policies.round_end(trainer.current_epoch, metrics)
        if self.log and metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        trainer.should_stop = trainer.should_stop or self.policies.should_stop

"""What the training backends are configured with; no torch here, so that the config schema can extend it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerSettings:
    """What the update rule needs: ``optimizer`` (``sgd`` or ``adam``), ``lr``, ``momentum``, ``weight_decay``."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class TrainSettings:
    """Local-training hyperparameters: what a training backend reads (the `train:` config section extends it)."""

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 16
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0
    clip_grad_norm: float | None = None
    eval_batch_size: int = 1024
    channels_last: bool = True
    #: On a CPU in 32-bit precision, a training batch whose forward pass costs fewer FLOPs than this runs its
    #: convolutions on ATen's native kernels instead of oneDNN's, whose cost per call dominates tiny batches
    #: (see `ClientTrainer`); 0: always oneDNN.
    native_conv_flops: float = 8e6

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        """What the update rule (`FunctionalOptimizer`) needs."""
        return OptimizerSettings(self.optimizer, self.lr, self.momentum, self.weight_decay)

"""Evaluation metrics of a classifier: a confusion matrix (reset/update/compute) and the scores it gives.

torchmetrics' ``MulticlassAccuracy`` (micro) and macro ``F1Score``/``Precision``/``Recall`` with their
conventions (argmax predictions; a score with a zero denominator is 0; a class that is neither in the labels
nor predicted is left out of the macro average), written here because ``import torchmetrics`` imports all of
``torchmetrics.functional`` and with it scipy.signal, matplotlib and torchvision's models: 1.3 s of a
quickstart run's ~4 s start-up on the 2-core VM (2026-12-01), for four divisions of one count matrix.
tests/test_evaluation.py checks the values against torchmetrics.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    num, den = num.float(), den.float()  # torchmetrics' float32 maths, so that the logged values are its own
    return torch.where(den != 0, num / den, torch.zeros((), dtype=num.dtype, device=num.device))


def classification_scores(confusion: Tensor) -> dict[str, Tensor]:
    """``acc`` (micro), and macro ``f1``, ``precision`` and ``recall`` of a (true x predicted) count matrix."""
    tp = confusion.diagonal()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    weights = ((tp + fp + fn) > 0).float()  # torchmetrics' macro average weighs absent classes 0

    def macro(score: Tensor) -> Tensor:
        return _safe_divide(weights * score, weights.sum()).sum()  # torchmetrics' order of operations

    return {"acc": _safe_divide(tp.sum(), (tp + fn).sum()),
            "f1": macro(_safe_divide(2.0 * tp, 2.0 * tp + 1.0 * fn + fp)),
            "precision": macro(_safe_divide(tp, tp + fp)),
            "recall": macro(_safe_divide(tp, tp + fn))}


class ConfusionMatrix:
    """Counts of (true class, argmax prediction) pairs over batches, on the logits' device."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)

    def reset(self) -> None:
        """Forget every counted batch."""
        self.counts.zero_()

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Count one batch: ``logits`` of shape (N, C), ``target`` class indices of shape (N,)."""
        pairs = target.reshape(-1).long() * self.num_classes + logits.argmax(dim=-1).reshape(-1)
        self.counts += torch.bincount(pairs, minlength=self.num_classes**2)

    def compute(self) -> dict[str, Tensor]:
        """`classification_scores` of the batches counted since the last `reset`."""
        return classification_scores(self.counts.view(self.num_classes, self.num_classes))

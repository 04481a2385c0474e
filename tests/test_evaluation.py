"""The evaluation metrics against a hand-computed confusion matrix and against torchmetrics itself."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from csfl_fabric.training.evaluation import ConfusionMatrix, classification_scores


def test_scores_of_a_hand_computed_matrix() -> None:
    # Rows: true class; columns: predicted. Class 2 is neither in the labels nor predicted: left out of the means.
    confusion = torch.tensor([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    scores = {k: v.item() for k, v in classification_scores(confusion).items()}
    assert scores["acc"] == pytest.approx(3 / 4)
    assert scores["precision"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert scores["recall"] == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert scores["f1"] == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_no_samples_score_zero() -> None:
    assert {k: v.item() for k, v in classification_scores(torch.zeros(4, 4, dtype=torch.long)).items()} == {
        "acc": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_the_same_values_as_torchmetrics_over_batches(seed: int) -> None:
    # Prepare: 10 classes, labels from 7 of them, predictions from 8 (one class never predicted, some never seen).
    g = torch.Generator().manual_seed(seed)
    num_classes = 10
    reference = {"acc": MulticlassAccuracy(num_classes, average="micro"),
                 "f1": MulticlassF1Score(num_classes, average="macro"),
                 "precision": MulticlassPrecision(num_classes, average="macro"),
                 "recall": MulticlassRecall(num_classes, average="macro")}
    ours = ConfusionMatrix(num_classes)
    ours.update(torch.randn(5, num_classes), torch.zeros(5, dtype=torch.long))  # counted, then reset
    ours.reset()
    for size in (33, 1, 64):
        logits = torch.randn(size, num_classes, generator=g)
        logits[:, 8:] -= 100.0  # classes 8 and 9 are never predicted
        target = torch.randint(0, 7, (size,), generator=g)
        ours.update(logits, target)
        for metric in reference.values():
            metric.update(logits, target)
    # Assert: the same float32 values, bit for bit.
    computed = ours.compute()
    for name, metric in reference.items():
        assert torch.equal(computed[name], metric.compute()), name

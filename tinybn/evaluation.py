"""The evaluation loop: precision@1 of a model over batches, in all and by true class.

Floor: training (tests/test_layering.py); imports core (tensor), backend and metrics.
"""
import numpy as np

from . import backend
from .metrics import per_class_counts
from .tensor import Tensor, no_grad


class Evaluation:
    """What evaluate_batches counts: hits and examples, in all and by true class."""

    def __init__(self, correct, total):
        self.correct_per_class, self.total_per_class = correct, total
        self.correct, self.total = int(correct.sum()), int(total.sum())

    @property
    def precision(self):
        """precision@1 (tf.nn.in_top_k(logits, labels, 1)); 0.0 when there were no examples."""
        return self.correct / max(self.total, 1)


def evaluate_batches(model, batches, num_classes=None):
    """The model's logits of every (images, labels) of `batches` under no_grad, counted by
    metrics.per_class_counts; the caller sets the mode (eval(): BN on its moving statistics)."""
    correct = total = 0
    with no_grad():
        for images, labels in batches:
            logits = model(Tensor(backend.device_array(images))).numpy()
            c, t = per_class_counts(logits, labels, num_classes or logits.shape[1])
            correct, total = correct + c, total + t
    if isinstance(total, int):          # no batch at all
        correct = total = np.zeros(num_classes or 0, dtype=np.int64)
    return Evaluation(correct, total)

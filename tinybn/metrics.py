"""Classification metrics from logits (N, K) and int labels (N,), as numpy arrays on the host.

    in_top_1(logits, labels)          bool (N,): tf.nn.in_top_k(logits, labels, k=1)
    per_class_counts(logits, labels)  (correct (K,), total (K,)) int64, by true class
    precision_at_1(logits, labels)    correct / N over the batch

in_top_k counts a tie for the top logit as a hit: example i is correct when
logits[i, labels[i]] >= max_j logits[i, j]. argmax would pick one of the tied
classes instead, and count a tie as a miss when it picks another.
The per-class counts are these same hits, summed by true class: correct.sum() is the
number of hits and total.sum() = N, so precision@1 = correct.sum() / total.sum().

Imports numpy only: the lowest of floors, any module may use it.
"""
import numpy as np


def _check(logits, labels):
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    return logits, labels


def in_top_1(logits, labels):
    """Whether each example's label has the top logit (ties count as hits, as in_top_k)."""
    logits, labels = _check(logits, labels)
    return logits[np.arange(len(labels)), labels] >= logits.max(axis=1, initial=-np.inf)


def per_class_counts(logits, labels, num_classes=None):
    """(correct, total): int64 (num_classes,) counts of hits and of examples by true class;
    num_classes defaults to K, the logits' width."""
    logits, labels = _check(logits, labels)
    k = logits.shape[1] if num_classes is None else num_classes
    hits = in_top_1(logits, labels)
    return (np.bincount(labels[hits], minlength=k).astype(np.int64),
            np.bincount(labels, minlength=k).astype(np.int64))


def precision_at_1(logits, labels):
    """Fraction of the batch whose label has the top logit; 0.0 for an empty batch."""
    hits = in_top_1(logits, labels)
    return float(hits.mean()) if hits.size else 0.0

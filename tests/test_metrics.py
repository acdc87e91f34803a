"""tinybn.metrics: in_top_1, per_class_counts and precision_at_1 on hand-built logits, and the
evaluation loop (tinybn.training.evaluate_batches) counting the same over batches."""
import numpy as np
import pytest

from tinybn.metrics import in_top_1, per_class_counts, precision_at_1
from tinybn.tensor import Tensor
from tinybn.training import evaluate_batches

# 6 examples, 3 classes: the label's logit is the top (hit), below the top (miss), or tied for it
LOGITS = np.array([[5.0, 1.0, 0.0],     # label 0: hit
                   [2.0, 2.0, 1.0],     # label 1: tie with class 0, in_top_k counts a hit
                   [0.0, 3.0, 1.0],     # label 2: miss (class 1 is the top)
                   [0.0, 0.0, 4.0],     # label 2: hit
                   [1.0, 0.0, -1.0],    # label 1: miss
                   [np.nan, 0.0, 1.0]],  # label 0: a NaN logit is no hit
                  dtype=np.float32)
LABELS = np.array([0, 1, 2, 2, 1, 0], dtype=np.int32)
HITS = np.array([True, True, False, True, False, False])
# by true class: class 0 has examples 0 and 5 (1 hit), class 1 examples 1 and 4 (1 hit),
# class 2 examples 2 and 3 (1 hit); class 3 (num_classes=4) none
CORRECT, TOTAL = np.array([1, 1, 1]), np.array([2, 2, 2])


def test_in_top_1_counts_a_tie_as_a_hit():
    np.testing.assert_array_equal(in_top_1(LOGITS, LABELS), HITS)


def test_per_class_counts_closed_form():
    correct, total = per_class_counts(LOGITS, LABELS)
    np.testing.assert_array_equal(correct, CORRECT)
    np.testing.assert_array_equal(total, TOTAL)
    assert correct.dtype == total.dtype == np.int64
    correct, total = per_class_counts(LOGITS, LABELS, num_classes=4)
    np.testing.assert_array_equal(correct, [1, 1, 1, 0])
    np.testing.assert_array_equal(total, [2, 2, 2, 0])


def test_per_class_counts_sum_to_precision_at_1():
    correct, total = per_class_counts(LOGITS, LABELS)
    assert precision_at_1(LOGITS, LABELS) == correct.sum() / total.sum() == 3 / 6


def test_one_class_and_an_empty_batch():
    logits = np.eye(4, dtype=np.float32)            # example i's top logit is class i
    labels = np.array([0, 0, 2, 0], dtype=np.int32)
    correct, total = per_class_counts(logits, labels)
    np.testing.assert_array_equal(correct, [1, 0, 1, 0])
    np.testing.assert_array_equal(total, [3, 0, 1, 0])
    empty = per_class_counts(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    np.testing.assert_array_equal(empty, np.zeros((2, 4)))
    assert precision_at_1(np.zeros((0, 4), np.float32), np.zeros(0, np.int32)) == 0.0


@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros((3,)), np.zeros(3, np.int32), "logits must be"),
    (np.zeros((3, 2)), np.zeros(2, np.int32), "labels"),
    (np.zeros((2, 3)), np.array([0, 3]), r"labels must be in \[0, 3\), got 0..3"),
    (np.zeros((2, 3)), np.array([-1, 0]), r"labels must be in \[0, 3\)"),
])
def test_bad_shapes_and_labels_are_refused(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        per_class_counts(logits, labels)


class _Fixed:
    """A 'model' whose logits for a batch are the rows of LOGITS its images index."""

    def __call__(self, x):
        return Tensor(LOGITS[np.asarray(x.data, dtype=np.int64)])


def test_evaluate_batches_sums_the_batches():
    batches = [(np.array([0, 1, 2, 3]), LABELS[:4]), (np.array([4, 5]), LABELS[4:])]
    result = evaluate_batches(_Fixed(), batches, num_classes=3)
    np.testing.assert_array_equal(result.correct_per_class, CORRECT)
    np.testing.assert_array_equal(result.total_per_class, TOTAL)
    assert (result.correct, result.total, result.precision) == (3, 6, 0.5)
    empty = evaluate_batches(_Fixed(), [], num_classes=3)
    assert (empty.correct, empty.total, empty.precision) == (0, 0, 0.0)

"""The evaluation report of a classifier (python -m tinybn.eval cifar --report / --plot DIR): which
classes it gets right and which it confuses, as numbers and as pictures.

    predictions(model, batches)        (labels, predicted) of every example, under no_grad
    ClassReport(labels, predicted, names)  the confusion matrix, per-class precision and recall;
                                       format() is the printed table
    class_names(folder)                the names of batches.meta.txt, else CIFAR-10's with a note
    plot_confusion / plot_misclassified / plot_curves   the PNGs of --plot (matplotlib)
    plot_time_curves(curves, path)     --time-curve: precision@1 against wall time, runs side by side

Conventions (C the confusion matrix, K classes):
    C[i, j]      the examples of true class i predicted as class j: rows are the true class,
                 columns the predicted one, as tf.math.confusion_matrix(labels, predictions)
    precision_j  C[j, j] / sum_i C[i, j]: of the examples predicted j, the share that are j
    recall_i     C[i, i] / sum_j C[i, j]: of the examples of class i, the share predicted i
A class that is never predicted (or has no example) makes a 0/0: it counts as 0, as TF's
divide_no_nan in its metrics, and the table shows "-" there. The prediction is the top logit;
a tie for the top that includes the true class counts as the true class, as tf.nn.in_top_k
counts it a hit, so the diagonal sums to precision@1's hits (tinybn.metrics).

matplotlib (the plot extra) is imported only by the plots, with the object API (Figure,
no pyplot): nothing changes the matplotlib backend of a program that imports this module.
Each PNG is written atomically (a temporary file moved onto the name) and replaces the
earlier plot of that name in DIR, a folder of plots; DIR is created if need be.

Tasks floor: imports metrics, core (tensor), backend, checkpoint and numpy; matplotlib late.
"""
import csv
import os

import numpy as np

from .. import backend
from ..checkpoint import atomic_write
from ..metrics import in_top_1
from ..tensor import Tensor, no_grad

CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
META_FILE = "batches.meta.txt"
PLOT_FILES = ("confusion_matrix.png", "misclassified.png", "curves.png")
MATPLOTLIB_MISSING = "--plot needs matplotlib, which is not installed: pip install -e '.[plot]'"


def predictions(model, batches):
    """(labels, predicted), int64 (N,) each, of every (images, labels) of `batches`; the caller sets
    the model's mode (eval(): BN on its moving statistics)."""
    labels, predicted = [], []
    with no_grad():
        for images, batch_labels in batches:
            logits = model(Tensor(backend.device_array(images))).numpy()
            batch_labels = backend.to_numpy(batch_labels).astype(np.int64)
            top = np.argmax(logits, axis=1)
            labels.append(batch_labels)
            predicted.append(np.where(in_top_1(logits, batch_labels), batch_labels, top))
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(labels), np.concatenate(predicted)


def _divide_no_nan(a, b):
    return np.where(b > 0, a / np.maximum(b, 1), 0.0)


class ClassReport:
    """The confusion matrix of (labels, predicted) over len(names) classes and what follows from it."""

    def __init__(self, labels, predicted, names):
        labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
        k = len(names)
        if labels.shape != predicted.shape or labels.ndim != 1:
            raise ValueError(f"labels and predicted must be (N,) alike, got {labels.shape} and {predicted.shape}")
        for what, values in (("labels", labels), ("predicted", predicted)):
            if values.size and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{what} must be in [0, {k}) for {k} class names, got {values.min()}..{values.max()}")
        self.names = list(names)
        self.confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
        self.true_counts = self.confusion.sum(axis=1)          # examples of each class
        self.predicted_counts = self.confusion.sum(axis=0)     # examples predicted as each class
        hits = np.diag(self.confusion)
        self.precision = _divide_no_nan(hits, self.predicted_counts)
        self.recall = _divide_no_nan(hits, self.true_counts)
        self.correct, self.total = int(hits.sum()), int(labels.size)

    @property
    def precision_at_1(self):
        return self.correct / max(self.total, 1)

    def format(self):
        """The per-class table, then the confusion matrix with numbered columns."""
        width = max(len("mean over classes"), 4 + max(len(n) for n in self.names)) + 2
        lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'examples':>10}{'predicted':>11}"]
        for i, name in enumerate(self.names):
            precision = f"{self.precision[i]:.4f}" if self.predicted_counts[i] else "-"
            recall = f"{self.recall[i]:.4f}" if self.true_counts[i] else "-"
            lines.append(f"{i:<3} {name:<{width - 4}}{precision:>10}{recall:>10}"
                         f"{self.true_counts[i]:>10}{self.predicted_counts[i]:>11}")
        lines.append(f"{'mean over classes':<{width}}{self.precision.mean():>10.4f}{self.recall.mean():>10.4f}"
                     f"{self.total:>10}")
        cell = max(5, len(str(self.confusion.max())) + 1)
        lines.append("")
        lines.append("confusion matrix (row: true class, column: predicted class)")
        lines.append(" " * width + "".join(f"{j:>{cell}}" for j in range(len(self.names))))
        for i, name in enumerate(self.names):
            lines.append(f"{i:<3} {name:<{width - 4}}" + "".join(f"{c:>{cell}}" for c in self.confusion[i]))
        return "\n".join(lines)


def class_names(folder, num_classes=len(CIFAR10_CLASS_NAMES)):
    """(names, note): the class names of `folder`/batches.meta.txt, one a line; when it is absent or
    does not hold num_classes names, CIFAR-10's standard names and a note that says why."""
    path = os.path.join(folder, META_FILE) if folder else META_FILE
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        return list(CIFAR10_CLASS_NAMES), f"note: class names are CIFAR-10's standard ones: {path}: {reason}"
    if len(names) != num_classes:
        return list(CIFAR10_CLASS_NAMES), (f"note: class names are CIFAR-10's standard ones: {path} holds "
                                           f"{len(names)} names, not {num_classes}")
    return names, None


# --- the pictures -------------------------------------------------------------------
def figure_class():
    """matplotlib's Figure; ImportError with a one-line message naming the extra when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None
    return Figure


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    os.chmod(path, 0o644)       # a picture for anyone to read, not the temporary file's 0600
    return path


def plot_confusion(report, path, title=""):
    """The confusion matrix as a heat map with its counts, rows the true class; 640 x 560 pixels."""
    fig = figure_class()(figsize=(6.4, 5.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    k = len(report.names)
    image = ax.imshow(report.confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), report.names, rotation=45, ha="right")
    ax.set_yticks(range(k), report.names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix: precision@1 {report.precision_at_1:.4f}")
    high = report.confusion.max() / 2 if report.confusion.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(report.confusion[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if report.confusion[i, j] > high else "black")
    return _save(fig, path)


def plot_misclassified(images, labels, predicted, names, path, count=24, columns=6):
    """The first `count` misclassified images (uint8 (N, H, W, 3), as read from the files) in a grid,
    each titled with its true and predicted class; 720 x 150 pixels per row of `columns`."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predicted))[:count]
    rows = max(1, -(-len(wrong) // columns))
    fig = figure_class()(figsize=(7.2, 1.5 * rows), dpi=100, layout="constrained")
    for n, i in enumerate(wrong):
        ax = fig.add_subplot(rows, columns, n + 1)
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"true {names[labels[i]]}\npredicted {names[predicted[i]]}", fontsize=7)
        ax.set_axis_off()
    if not len(wrong):
        fig.text(0.5, 0.5, "no misclassified example", ha="center", va="center")
    return _save(fig, path)


def read_csv_columns(path, columns):
    """{column: float array} of the rows of the CSV file at `path` that have every one of `columns`
    (a row with an empty value in one of them is left out); None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r} (its columns: {', '.join(reader.fieldnames or [])})")
        rows = [r for r in reader if all(r.get(c) not in (None, "") for c in columns)]
    return {c: np.array([float(r[c]) for r in rows]) for c in columns}


def plot_curves(train_csv, eval_csv, path):
    """Loss and precision@1 against the step: the training loss and batch precision@1 of train.csv,
    and the evaluations' precision@1 of eval.csv when there is one; 1000 x 400 pixels."""
    train = read_csv_columns(train_csv, ("step", "loss", "train_accuracy"))
    if train is None:
        raise FileNotFoundError(f"no {train_csv}: the curves come from the training run's train.csv")
    evaluation = read_csv_columns(eval_csv, ("step", "precision_at_1")) if eval_csv else None
    fig = figure_class()(figsize=(10, 4), dpi=100, layout="constrained")
    loss, precision = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    loss.plot(train["step"], train["loss"], label="training loss")
    loss.set_xlabel("step")
    loss.set_ylabel("loss")
    loss.set_title("total loss (cross-entropy + weight decay)")
    precision.plot(train["step"], train["train_accuracy"], label="training batch", alpha=0.6)
    if evaluation is not None and len(evaluation["step"]):
        precision.plot(evaluation["step"], evaluation["precision_at_1"], "o-", label="evaluation (eval.csv)")
    precision.set_xlabel("step")
    precision.set_ylabel("precision @ 1")
    precision.set_ylim(0, 1)
    precision.set_title("precision @ 1")
    for ax in (loss, precision):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_time_curves(curves, path, title="precision @ 1 on the held-out set against wall time"):
    """Precision@1 against the seconds since each run's start, every run on the same axes:
    `curves` [(label, {"wall_time_secs": ..., "precision_at_1": ...})], as tasks/curve.py's
    read_curve gives them; 800 x 500 pixels."""
    fig = figure_class()(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for label, curve in curves:
        order = np.argsort(curve["wall_time_secs"], kind="stable")
        ax.plot(curve["wall_time_secs"][order] / 60, curve["precision_at_1"][order], "o-", label=label)
    ax.set_xlabel("wall time since the run's start (minutes, data loading included)")
    ax.set_ylabel("precision @ 1")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)

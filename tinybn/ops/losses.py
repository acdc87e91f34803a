"""Softmax, log-softmax, softmax cross-entropy (dense and sparse labels), l2_loss.

Floor: ops; imports the core (function), backend and numpy.

Shapes: logits (..., K) with K classes along `axis` (default the last); N is
the product of the other axes. Per-example losses have the logits' shape
without the class axis. Sparse labels are integers of shape (...) in [0, K).

    softmax(x)      = exp(x - max x) / sum(exp(x - max x))
                      dx = (g - sum(g * y)) * y                      (TF's _SoftmaxGrad)
    log_softmax(x)  = (x - max x) - log(sum(exp(x - max x)))
                      dx = g - sum(g) * exp(y)                       (TF's _LogSoftmaxGrad)
    softmax_cross_entropy_with_logits(labels, logits)
                    = sum(labels * (log(sum(exp(s))) - s)),  s = logits - max(logits)
                      d logits = g * (softmax(logits) - labels)
                      d labels = g * -log_softmax(logits)
    sparse_softmax_cross_entropy_with_logits(labels, logits)
                    = the same with one-hot labels;  d logits = g * (softmax - onehot)
    l2_loss(t)      = sum(t ** 2) / 2;  dt = t * g

TF conventions followed (docs/tf-conventions.md#losses, tensorflow/core/kernels/xent_op.h):
- The max is subtracted before exp, so logits of 1e4 give a loss of exactly 1e4.
- The logits gradient is the kernel's `backprop = softmax - labels`, scaled by the
  upstream gradient, *even when the labels do not sum to 1*: that is not the true
  derivative of the loss then (which is sum(labels) * softmax - labels), but it
  is what TF computes and trains with, so tinybn does the same.
- Dense labels get the gradient -log_softmax(logits) (TF2's v2 op; the TF1
  compat op stops it), computed only when they need one (labels that require grad):
  usually they are data, and the log-softmax is neither kept nor computed.
  Labels are cast to the logits' dtype. Sparse labels get none.
- Sparse labels outside [0, K) are an error (TF raises InvalidArgumentError on CPU).

The hot primitive is `softmax_cross_entropy(labels, logits) -> (loss, backprop)`
on plain 2-D arrays: labels and logits (N, K) of one float dtype, loss (N,),
backprop (N, K) = softmax(logits) - labels. Kernels for other backends
implement that signature.
"""
from ..backend import array_module, dispatch, primitive
from ..function import Function


@primitive("softmax_cross_entropy")
def softmax_cross_entropy(labels, logits):
    """Per-row loss (N,) and backprop softmax - labels (N, K) of 2-D labels, logits (N, K)."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    loss = (labels * (xp.log(sum_exp) - shifted)).sum(axis=1)
    backprop = exp / sum_exp - labels
    return loss, backprop


def _log_softmax(x, axis):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, logits):
        _check_axis(logits, self.axis, "logits")
        xp = array_module(logits)
        exp = xp.exp(logits - logits.max(axis=self.axis, keepdims=True))
        y = exp / exp.sum(axis=self.axis, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return (gy - (gy * y).sum(axis=self.axis, keepdims=True)) * y


class LogSoftmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, logits):
        _check_axis(logits, self.axis, "logits")
        y = _log_softmax(logits, self.axis)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        xp = array_module(y)
        return gy - gy.sum(axis=self.axis, keepdims=True) * xp.exp(y)


class SoftmaxCrossEntropyWithLogits(Function):
    """Inputs (labels, logits) of one shape; output the per-example loss."""

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, labels, logits):
        _check_axis(logits, self.axis, "logits")
        if labels.shape != logits.shape:
            raise ValueError(f"softmax_cross_entropy_with_logits: labels and logits must have the same shape, "
                             f"got labels: {labels.shape} and logits: {logits.shape}")
        xp = array_module(logits)
        labels = labels.astype(logits.dtype, copy=False)
        # the class axis goes last and the rest flattens to N, as TF's _move_dim_to_end + _flatten_outer_dims
        logits2 = xp.moveaxis(logits, self.axis, -1)
        self.moved_shape = logits2.shape
        logits2 = logits2.reshape(-1, logits.shape[self.axis])
        labels2 = xp.moveaxis(labels, self.axis, -1).reshape(logits2.shape)
        loss, backprop = dispatch("softmax_cross_entropy", labels2, logits2)
        # the logits are kept only for the labels' gradient, which labels of data never need
        need_labels = self.needs_input_grad[0]
        self.save_for_backward(backprop, logits2 if need_labels else None)
        return loss.reshape(self.moved_shape[:-1])

    def backward(self, gloss):
        backprop, logits2 = self.saved
        need_labels, need_logits = self.needs_input_grad
        xp = array_module(backprop)
        g = gloss.reshape(-1, 1)
        glabels = glogits = None
        if need_labels:
            glabels = xp.moveaxis((g * -_log_softmax(logits2, -1)).reshape(self.moved_shape), -1, self.axis)
        if need_logits:
            glogits = xp.moveaxis((g * backprop).reshape(self.moved_shape), -1, self.axis)
        return glabels, glogits


class SparseSoftmaxCrossEntropyWithLogits(Function):
    """Inputs (labels (...), logits (..., K)); output the per-example loss (...)."""

    def forward(self, labels, logits):
        xp = array_module(logits)
        if logits.ndim < 1:
            raise ValueError(f"sparse_softmax_cross_entropy_with_logits: logits must have rank >= 1, "
                             f"got shape {logits.shape}")
        if logits.dtype.kind != "f":
            raise ValueError(f"sparse_softmax_cross_entropy_with_logits: logits must be floating point, "
                             f"got {logits.dtype}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"sparse_softmax_cross_entropy_with_logits: labels must be integer class "
                             f"indices, got dtype {labels.dtype}")
        if labels.ndim != logits.ndim - 1 or labels.shape != logits.shape[:-1]:
            raise ValueError(f"sparse_softmax_cross_entropy_with_logits: labels must have rank "
                             f"logits.rank - 1 = {logits.ndim - 1} and shape logits.shape[:-1] = "
                             f"{logits.shape[:-1]}, got labels: {labels.shape} and logits: {logits.shape}")
        k = logits.shape[-1]
        flat = labels.reshape(-1)
        bad = (flat < 0) | (flat >= k)
        if bool(bad.any()):
            raise ValueError(f"sparse_softmax_cross_entropy_with_logits: labels must be in [0, {k}) "
                             f"(number of classes), got label value {int(flat[bad][0])}")
        onehot = xp.zeros((flat.size, k), logits.dtype)
        onehot[xp.arange(flat.size), flat] = 1
        # the sum over K of onehot * term is exactly the labelled term: zeros add nothing
        return self._cross_entropy(onehot, logits, labels.shape)

    def _cross_entropy(self, target, logits, labels_shape):
        """The loss against dense target rows (N, K) of the logits (..., K), shaped like the labels."""
        loss, backprop = dispatch("softmax_cross_entropy", target, logits.reshape(target.shape))
        self.save_for_backward(backprop)
        self.shape = logits.shape
        return loss.reshape(labels_shape)

    def backward(self, gloss):
        (backprop,) = self.saved
        return None, (gloss.reshape(-1, 1) * backprop).reshape(self.shape)


class L2Loss(Function):
    def forward(self, t):
        if t.dtype.kind != "f":
            raise ValueError(f"l2_loss: t must be floating point, got {t.dtype}")
        self.save_for_backward(t)
        xp = array_module(t)
        return xp.asarray((t * t).sum() * t.dtype.type(0.5))

    def backward(self, g):
        (t,) = self.saved
        return t * g


def _check_axis(x, axis, name):
    if x.ndim < 1:
        raise ValueError(f"{name} must have rank >= 1, got a scalar")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for {name} of rank {x.ndim}")


# ---- lowercase wrappers, named like their tf.nn twins ---------------------------

def softmax(logits, axis=-1):
    return Softmax(axis)(logits)


def log_softmax(logits, axis=-1):
    return LogSoftmax(axis)(logits)


def softmax_cross_entropy_with_logits(labels, logits, axis=-1):
    """tf.nn.softmax_cross_entropy_with_logits (v2): per-example loss, gradients to both inputs."""
    return SoftmaxCrossEntropyWithLogits(axis)(labels, logits)


def sparse_softmax_cross_entropy_with_logits(labels, logits):
    """tf.nn.sparse_softmax_cross_entropy_with_logits: integer labels (...), logits (..., K)."""
    return SparseSoftmaxCrossEntropyWithLogits()(labels, logits)


def l2_loss(t):
    """tf.nn.l2_loss: sum(t ** 2) / 2, a scalar of t's dtype."""
    return L2Loss()(t)


# ---- label smoothing (the fast CIFAR recipe's loss) -------------------------------------

def _check_sparse(op, labels, logits):
    """The sparse cross-entropy's input checks, each a ValueError naming the problem; K."""
    if logits.ndim < 1 or logits.dtype.kind != "f":
        raise ValueError(f"{op}: logits must be floating point of rank >= 1, got {logits.dtype} {logits.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"{op}: labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                         f"got labels: {labels.shape} and logits: {logits.shape}")
    k = logits.shape[-1]
    flat = labels.reshape(-1)
    bad = (flat < 0) | (flat >= k)
    if bool(bad.any()):
        raise ValueError(f"{op}: labels must be in [0, {k}) (number of classes), got label value {int(flat[bad][0])}")
    return k


class SparseSoftmaxCrossEntropyWithLabelSmoothing(SparseSoftmaxCrossEntropyWithLogits):
    """Inputs (labels (...), logits (..., K)); output the per-example loss (...).

    The target is onehot * (1 - s) + s / K, computed in the logits' dtype (s and K cast to
    it first, as Keras casts label_smoothing to y_pred's dtype), so each row sums to 1 and
    the logits gradient softmax - target is the loss's true derivative.
    """

    def __init__(self, label_smoothing):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"sparse_softmax_cross_entropy_with_label_smoothing: label_smoothing must be in "
                             f"[0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, labels, logits):
        k = _check_sparse("sparse_softmax_cross_entropy_with_label_smoothing", labels, logits)
        xp = array_module(logits)
        t = logits.dtype.type
        s = t(self.label_smoothing)
        flat = labels.reshape(-1)
        target = xp.full((flat.size, k), s / t(k), logits.dtype)
        target[xp.arange(flat.size), flat] = (t(1) - s) + s / t(k)
        return self._cross_entropy(target, logits, labels.shape)     # backward: the parent's


def sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, label_smoothing=0.0):
    """Per-example softmax cross-entropy of integer labels (...) against onehot * (1 - s) + s / K.

    Keras's semantics: tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s,
    reduction=None)(tf.one_hot(labels, K), logits), s and K cast to the logits' dtype before the
    target is formed. tf.compat.v1.losses.softmax_cross_entropy(onehot, logits, label_smoothing=s,
    reduction=NONE) smooths the same way but forms 1 - s and s / K as Python floats, which can
    differ by an ulp of the target in float32; Keras is TF2's API, hence its rounding. Per
    example and unreduced, since the recipes reduce differently (the fast CIFAR recipe sums
    over the batch, the tutorial means).
    """
    return SparseSoftmaxCrossEntropyWithLabelSmoothing(label_smoothing)(labels, logits)

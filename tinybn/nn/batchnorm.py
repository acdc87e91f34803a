"""BatchNorm: batch normalisation over the last axis of (N, C) or NHWC (N, H, W, C) inputs.

Floor: nn; imports the core (tensor), backend, ops (basic, batchnorm, fused_batch_norm,
sync_batch_norm), nn/module.py and numpy.

Training (`.train()`, the default): normalise with this batch's mean and
population variance (reduced over all axes but the last) through
`fused_batch_norm` (closed-form backward), then update the moving statistics,
as Keras 3 assigns them:

    moving_mean     = moving_mean * decay + mean_B * (1 - decay)
    moving_variance = moving_variance * decay + v * (1 - decay)

where v depends on `moving_variance_rule`:
    "population" (default)  v = var_B, the population variance: Keras 3, TF 1.0's
                            non-fused contrib batch_norm.
    "bessel"                v = var_B * n/(n-1), n = N (2-D) or N*H*W (4-D): TF1's fused
                            batch norm (contrib batch_norm on 4-D, tf.compat.v1.layers,
                            tf_keras), PyTorch.
synchronized=True (Keras's name; cross-replica batch norm): when `replica_group` is set
to a group of more than one replica (the data-parallel trainer sets it on every BatchNorm
of the model), training mode normalises through ops/sync_batch_norm.py with the mean and
variance of every replica's batch together, and the moving statistics above are updated
from those global statistics (the "bessel" rule's n is the global count), by the same rule
in the same order, so every replica holds the same moving statistics. Without a group, or
with a group of one, the layer computes exactly as synchronized=False. Not with renorm.
Inference (`.eval()`): y = gamma * (x - moving_mean) * rsqrt(moving_variance + eps) + beta;
the moving statistics are never changed.

zero_debias_moving_mean=True (TF1 contrib, moving mean only; docs/tf-conventions.md#zero-debias-moving-mean):
    moving_mean_biased -= (moving_mean_biased - mean_B) * (1 - decay);  local_step += 1
    moving_mean = moving_mean_biased / (1 - (1 - (1 - decay))**local_step)
computed in the layer's dtype in that order, so float32 reproduces TF's 2.000026;
moving_mean's previous value is ignored (assigned, not averaged).

renorm=True (Batch Renormalisation, Keras 3's math): r, d from renorm_correction with
the pre-update renorm_mean/renorm_stddev; y = batch_normalization(x, mean_B, var_B,
d*gamma + beta, r*gamma, eps) with r, d constants; then
    renorm_mean   = renorm_mean*renorm_decay + mean_B*(1 - renorm_decay)
    renorm_stddev = renorm_stddev*renorm_decay + stddev*(1 - renorm_decay)
    moving_mean   = moving_mean*decay + mean_B*(1 - decay)
    moving_stddev = moving_stddev*decay + stddev*(1 - decay),   stddev = sqrt(var_B + eps)
    moving_variance = relu(moving_stddev**2 - eps)
"""
import numpy as np

from ..backend import array_module
from ..ops.basic import add, mul
from ..ops.batchnorm import batch_normalization, moments, renorm_correction
from ..ops.fused_batch_norm import fused_batch_norm
from ..ops.sync_batch_norm import sync_batch_norm
from ..tensor import Tensor, as_tensor
from .module import Module

VARIANCE_RULES = ("population", "bessel")


class BatchNorm(Module):
    """Batch normalisation over the channel (last) axis.

    num_features: C. decay: moving-average decay, default 0.999 as TF1 contrib batch_norm
    (Keras's default is 0.99); `momentum` (Keras's name) is an alias that takes precedence
    over the default decay, and must agree with a non-default one. center/scale:
    create beta/gamma (both default True, as Keras; contrib's scale default is False).
    epsilon: 0.001. moving_variance_rule: "population" (default, Keras 3) or "bessel"
    (TF1 fused, n/(n-1)). zero_debias_moving_mean: TF1 contrib's debiased moving mean.
    renorm, renorm_clipping ({'rmin', 'rmax', 'dmax'}), renorm_decay (Keras's
    renorm_momentum, default 0.99): batch renormalisation. synchronized: cross-replica batch
    statistics through the `replica_group` attribute (default None: local statistics).
    dtype: float32 default.

    Parameters: gamma (ones, if scale), beta (zeros, if center). Buffers: moving_mean
    (zeros), moving_variance (ones); with renorm also moving_stddev, renorm_mean,
    renorm_stddev (Keras's); with zero-debias moving_mean_biased and local_step.
    """

    def __init__(self, num_features, decay=0.999, center=True, scale=True, epsilon=0.001,
                 moving_variance_rule="population", zero_debias_moving_mean=False, renorm=False,
                 renorm_clipping=None, renorm_decay=0.99, dtype=np.float32, momentum=None, synchronized=False):
        super().__init__()
        if momentum is not None:
            if decay != 0.999 and decay != momentum:
                raise ValueError(f"BatchNorm: give decay or momentum (its alias), not both: "
                                 f"decay={decay}, momentum={momentum}")
            decay = momentum
        if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"BatchNorm: num_features must be a positive int, got {num_features!r}")
        for arg, value in (("decay", decay), ("renorm_decay", renorm_decay)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BatchNorm: {arg} must be in [0, 1], got {value}")
        if epsilon < 0:
            raise ValueError(f"BatchNorm: epsilon must be >= 0, got {epsilon}")
        if moving_variance_rule not in VARIANCE_RULES:
            raise ValueError(f"BatchNorm: moving_variance_rule must be one of {VARIANCE_RULES}, "
                             f"got {moving_variance_rule!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"BatchNorm: dtype must be a floating type, got {self.dtype}")
        if renorm:
            if synchronized:
                raise ValueError("BatchNorm: synchronized (cross-replica) batch statistics are not supported "
                                 "with renorm")
            if moving_variance_rule != "population":
                raise ValueError("BatchNorm: renorm derives moving_variance from moving_stddev; "
                                 "moving_variance_rule='bessel' cannot be combined with renorm")
            if zero_debias_moving_mean:
                raise ValueError("BatchNorm: zero_debias_moving_mean cannot be combined with renorm")
            renorm_clipping = dict(renorm_clipping or {})
            unknown = set(renorm_clipping) - {"rmax", "rmin", "dmax"}
            if unknown:
                raise ValueError(f"BatchNorm: renorm_clipping has unknown keys {sorted(unknown)}; "
                                 "allowed: 'rmax', 'rmin', 'dmax'")
            rmin, rmax, dmax = (renorm_clipping.get(k) for k in ("rmin", "rmax", "dmax"))
            if rmin is not None and rmax is not None and rmax < rmin:
                raise ValueError(f"BatchNorm: renorm_clipping rmax={rmax} is less than rmin={rmin}")
            if dmax is not None and dmax < 0:
                raise ValueError(f"BatchNorm: renorm_clipping dmax={dmax} must be >= 0")
        elif renorm_clipping is not None:
            raise ValueError("BatchNorm: renorm_clipping is only valid with renorm=True")

        self.num_features, self.decay, self.epsilon = int(num_features), float(decay), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.moving_variance_rule = moving_variance_rule
        self.zero_debias_moving_mean, self.renorm = bool(zero_debias_moving_mean), bool(renorm)
        self.renorm_clipping, self.renorm_decay = renorm_clipping, float(renorm_decay)
        self.synchronized = bool(synchronized)
        self.replica_group = None   # .size and .sum(array); set by the data-parallel trainer

        c, dt = self.num_features, self.dtype
        self.gamma = self.add_parameter("gamma", np.ones(c, dt)) if self.scale else None
        self.beta = self.add_parameter("beta", np.zeros(c, dt)) if self.center else None
        self.moving_mean = self.add_buffer("moving_mean", np.zeros(c, dt))
        self.moving_variance = self.add_buffer("moving_variance", np.ones(c, dt))
        if self.renorm:
            self.moving_stddev = self.add_buffer("moving_stddev", np.ones(c, dt))
            self.renorm_mean = self.add_buffer("renorm_mean", np.zeros(c, dt))
            self.renorm_stddev = self.add_buffer("renorm_stddev", np.ones(c, dt))
        if self.zero_debias_moving_mean:
            self.moving_mean_biased = self.add_buffer("moving_mean_biased", np.zeros(c, dt))
            self.local_step = self.add_buffer("local_step", np.zeros((), dt))

    def forward(self, x):
        x = as_tensor(x)
        if x.ndim < 2:
            raise ValueError(f"BatchNorm: input must be (N, C) or NHWC (rank >= 2), got shape {x.shape}")
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm: input has {x.shape[-1]} channels (last axis of shape {x.shape}) "
                             f"but num_features is {self.num_features}")
        if x.dtype != self.dtype:
            raise ValueError(f"BatchNorm: input dtype {x.dtype} differs from the layer's dtype {self.dtype}")
        gamma = self.gamma if self.scale else None
        beta = self.beta if self.center else None
        if not self.training:
            ones, zeros = self._ones_zeros()
            y, _, _ = fused_batch_norm(x, ones if gamma is None else gamma, zeros if beta is None else beta,
                                       self.moving_mean, self.moving_variance, self.epsilon, is_training=False)
            return y
        group = self.replica_group if self.synchronized else None
        synchronized = group is not None and group.size > 1
        # a replica may hold no rows: then sync_batch_norm refuses an empty GLOBAL batch, on every replica
        if x.size == 0 and not synchronized:     # TF returns NaN and averages it into the moving statistics
            raise ValueError(f"BatchNorm: training mode needs at least one example to take batch statistics "
                             f"over, got shape {x.shape}")
        if self.renorm:
            if self.synchronized:      # set after construction, where the constructor could not refuse it
                raise ValueError("BatchNorm: synchronized (cross-replica) batch statistics are not supported "
                                 "with renorm")
            return self._renorm_forward(x, gamma, beta)
        ones, zeros = self._ones_zeros()
        scale, offset = ones if gamma is None else gamma, zeros if beta is None else beta
        bessel = self.moving_variance_rule == "bessel"
        if synchronized:
            y, mean, var = sync_batch_norm(x, scale, offset, self.epsilon, group, bessel_correction=bessel)
        else:
            y, mean, var = fused_batch_norm(x, scale, offset, epsilon=self.epsilon, bessel_correction=bessel)
        self._update_moving(mean.data, var.data)
        return y

    def _ones_zeros(self):
        xp = array_module(self.moving_mean.data)
        return Tensor(xp.ones_like(self.moving_mean.data)), Tensor(xp.zeros_like(self.moving_mean.data))

    def _average(self, moving, value, decay):
        """Keras 3's assign: moving * decay + value * (1 - decay), constants in the layer dtype."""
        t = self.dtype.type
        return moving * t(decay) + value * t(1.0 - decay)

    def _update_moving(self, mean, var):
        # var is already Bessel-corrected (by fused_batch_norm or sync_batch_norm) under the "bessel" rule.
        if self.zero_debias_moving_mean:
            t = self.dtype.type
            one_minus_decay = t(1.0 - self.decay)     # TF: convert_to_tensor(1.0 - decay)
            biased = self.moving_mean_biased.data
            biased = biased - (biased - mean) * one_minus_decay
            step = self.local_step.data + t(1)
            self.moving_mean_biased.data, self.local_step.data = biased, step
            self.moving_mean.data = biased / (t(1) - (t(1) - one_minus_decay) ** step)
        else:
            self.moving_mean.data = self._average(self.moving_mean.data, mean, self.decay)
        self.moving_variance.data = self._average(self.moving_variance.data, var, self.decay)

    def _renorm_forward(self, x, gamma, beta):
        mean, var = moments(x, list(range(x.ndim - 1)))
        r, d = renorm_correction(mean.data, var.data, self.renorm_mean.data, self.renorm_stddev.data,
                                 self.epsilon, self.renorm_clipping)
        r, d = Tensor(r), Tensor(d)
        scale = r if gamma is None else mul(r, gamma)
        offset = d if gamma is None else mul(d, gamma)
        if beta is not None:
            offset = add(offset, beta)
        y = batch_normalization(x, mean, var, offset, scale, self.epsilon)

        xp = array_module(var.data)
        stddev = xp.sqrt(var.data + self.dtype.type(self.epsilon))
        self.renorm_mean.data = self._average(self.renorm_mean.data, mean.data, self.renorm_decay)
        self.renorm_stddev.data = self._average(self.renorm_stddev.data, stddev, self.renorm_decay)
        self.moving_mean.data = self._average(self.moving_mean.data, mean.data, self.decay)
        moving_stddev = self._average(self.moving_stddev.data, stddev, self.decay)
        self.moving_stddev.data = moving_stddev
        # relu: rounding can push stddev**2 - eps below zero
        self.moving_variance.data = xp.maximum(moving_stddev * moving_stddev - self.dtype.type(self.epsilon),
                                               self.dtype.type(0))
        return y

    def extra_repr(self):
        extra = f", renorm, renorm_clipping={self.renorm_clipping}" if self.renorm else ""
        extra += ", zero_debias_moving_mean" if self.zero_debias_moving_mean else ""
        extra += ", synchronized" if self.synchronized else ""
        return (f"{self.num_features}, decay={self.decay}, epsilon={self.epsilon}, center={self.center}, "
                f"scale={self.scale}, moving_variance_rule={self.moving_variance_rule!r}{extra}")

"""TF1 optimizers, the exponential-decay schedule and ExponentialMovingAverage.

Floor: optim; imports the core (state), backend, numpy, moving_averages.py and
lookahead.py (its own floor: ExponentialMovingAverage and LookaheadAverage live there,
one file each so all stay short, and are re-exported here as part of this module's API).

Update rules, exactly those of tensorflow/core/kernels/training_ops.cc and
tf.compat.v1.train (docs/tf-conventions.md#optimizers), in the parameter's dtype:

    GradientDescent   var -= lr * g
    Momentum          accum = accum * momentum + g
                      var -= accum * lr                                  (use_nesterov=False)
                      var -= g * lr + accum * momentum * lr              (use_nesterov=True)
    Adam              alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power)
                      m += (g - m) * (1 - beta1)
                      v += (g * g - v) * (1 - beta2)
                      var -= m * alpha / (sqrt(v) + epsilon)             ("epsilon hat")
                      then beta1_power *= beta1, beta2_power *= beta2    (float32 products)

TF conventions followed:
- Hyperparameters given as Python floats are float32 tensors in TF (then cast to
  the variable's dtype), so `1 - beta1` is float32(1) - float32(0.9) = 0.100000024.
  tinybn rounds every hyperparameter to float32 the same way; in float32 the
  updates are bit-exact against TF. The one exception: TF's CPU kernels flush
  subnormal floats (below 1.2e-38 in float32) to zero, and numpy keeps them, so
  an update whose values fall that low can differ there. exponential_decay
  flushes them as TF does.
- Momentum is TF1's form: with a schedule, a new lr rescales the whole accumulated
  velocity (Keras' SGD would only scale new gradients).
- The learning rate may be a number or a schedule: a callable of the global step
  (for example ExponentialDecay). It is read at the step count *before* the
  step's increment, as TF1's apply_gradients(global_step=...) does.
- `step()` updates each `.data` in place from its `.grad`; a None `.grad` is skipped, as in TF1.

Beside them, for the fast CIFAR recipe (airbench's), PyTorch's SGD rather than TF1's:

    SGD               g' = g + weight_decay * var                         (per parameter group)
                      buf = buf * momentum + g'                           (buf starts at 0: = g' at first)
                      var -= lr * (g' + momentum * buf)                   (nesterov=True)
                      var -= lr * buf                                     (nesterov=False)
                      lr = the group's lr * lr_lambda(step)               (torch's LambdaLR)
    Triangle          lr_lambda: linear from start to 1 at peak * total_steps, then to end

Parameters are a list of Parameters, or of (name, Parameter) pairs as
Module.named_parameters() yields them. Slots and state_dict() keys follow TF's
checkpoint names: "<name>/Momentum", "<name>/Adam" (m), "<name>/Adam_1" (v),
"beta1_power", "beta2_power", plus "iterations" (the global step). Unnamed
parameters are named by their index ("0", "1", ...).
"""
from collections import OrderedDict

import numpy as np

from .backend import array_module, to_numpy
from .moving_averages import ExponentialMovingAverage  # noqa: F401  (part of this API)
from .lookahead import LookaheadAverage, airbench_decay  # noqa: F401  (part of this API)
from .state import checked_state, named_tensors


class Optimizer:
    slot_names = ()     # TF's slot variable names, one zero-initialised array per parameter each

    def __init__(self, params, learning_rate):
        named = named_tensors(params, type(self).__name__)
        if not named:
            raise ValueError(f"{type(self).__name__}: params is empty")
        self.names = [str(i) if n is None else n for i, (n, _) in enumerate(named)]
        self._given_names = [n for n, _ in named]     # what a modified-in-place error calls each one
        self.params = [p for _, p in named]
        if not callable(learning_rate):
            learning_rate = float(learning_rate)
        self.learning_rate = learning_rate
        self.iterations = 0
        self.slots = {s: [array_module(p.data).zeros_like(p.data) for p in self.params] for s in self.slot_names}

    def current_learning_rate(self):
        """The float32 learning rate this step uses (the schedule at the pre-increment step)."""
        lr = self.learning_rate
        return np.float32(lr(self.iterations) if callable(lr) else lr)

    def step(self):
        """Apply one update to every parameter that has a .grad, then count the step."""
        lr = self.current_learning_rate()
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.shape != p.shape:
                raise ValueError(f"{type(self).__name__}: gradient of {self.names[i]!r} has shape "
                                 f"{p.grad.shape}, parameter has {p.shape}")
            dtype = p.dtype.type
            self._update(i, p.data, p.grad.astype(p.dtype, copy=False), dtype(lr), dtype)
            p.mark_modified(f"{type(self).__name__}.step()", self._given_names[i])
        self._finish()
        self.iterations += 1

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _update(self, i, var, g, lr, dtype):
        raise NotImplementedError

    def _finish(self):
        pass

    # --- checkpoint state ---------------------------------------------------
    def _scalars(self):
        return OrderedDict(iterations=np.array(self.iterations, dtype=np.int64))

    def _set_scalars(self, state):
        if state["iterations"] < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: iterations is {int(state['iterations'])}, "
                             "a step count cannot be negative")
        self.iterations = int(state["iterations"])

    def state_dict(self):
        """{key: numpy array copy}: the global step, TF-named slots and non-slot scalars."""
        state = self._scalars()
        for s in self.slot_names:
            for name, slot in zip(self.names, self.slots[s]):
                state[f"{name}/{s}"] = np.array(to_numpy(slot), copy=True)
        return state

    def load_state_dict(self, state):
        """Load a state_dict(); on any missing, unexpected, mis-shaped or non-real key, change nothing."""
        expected = OrderedDict((k, (v.shape, v.dtype)) for k, v in self._scalars().items())
        for s in self.slot_names:
            for name, slot in zip(self.names, self.slots[s]):
                expected[f"{name}/{s}"] = (slot.shape, slot.dtype)
        arrays = checked_state(f"{type(self).__name__}.load_state_dict", expected, state)
        slots = {s: [array_module(slot).asarray(arrays[f"{name}/{s}"], dtype=slot.dtype)
                     for name, slot in zip(self.names, self.slots[s])] for s in self.slot_names}
        self._set_scalars(arrays)       # may still refuse a value (a negative step), before any slot changes
        for s in self.slot_names:
            for slot, value in zip(self.slots[s], slots[s]):
                slot[...] = value
        return self


class GradientDescent(Optimizer):
    """tf.compat.v1.train.GradientDescentOptimizer(learning_rate): var -= lr * g."""

    def _update(self, i, var, g, lr, dtype):
        var -= lr * g


class Momentum(Optimizer):
    """tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum, use_nesterov=False)."""
    slot_names = ("Momentum",)

    def __init__(self, params, learning_rate, momentum, use_nesterov=False):
        super().__init__(params, learning_rate)
        self.momentum = float(momentum)
        self.use_nesterov = bool(use_nesterov)

    def _update(self, i, var, g, lr, dtype):
        accum = self.slots["Momentum"][i]
        momentum = dtype(np.float32(self.momentum))
        accum *= momentum
        accum += g
        if self.use_nesterov:
            var -= g * lr + accum * momentum * lr
        else:
            var -= accum * lr


class Adam(Optimizer):
    """tf.compat.v1.train.AdamOptimizer(learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8)."""
    slot_names = ("Adam", "Adam_1")

    def __init__(self, params, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
        super().__init__(params, learning_rate)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        # TF1's non-slot variables, float32 whatever the parameters' dtype
        self.beta1_power = np.float32(beta1)
        self.beta2_power = np.float32(beta2)

    def _update(self, i, var, g, lr, dtype):
        m, v = self.slots["Adam"][i], self.slots["Adam_1"][i]
        xp = array_module(var)
        one = dtype(1)
        beta1, beta2, eps = (dtype(np.float32(x)) for x in (self.beta1, self.beta2, self.epsilon))
        alpha = lr * np.sqrt(one - dtype(self.beta2_power)) / (one - dtype(self.beta1_power))
        m += (g - m) * (one - beta1)
        v += (g * g - v) * (one - beta2)
        var -= m * alpha / (xp.sqrt(v) + eps)

    def _finish(self):
        self.beta1_power = np.float32(self.beta1_power * np.float32(self.beta1))
        self.beta2_power = np.float32(self.beta2_power * np.float32(self.beta2))

    def _scalars(self):
        state = super()._scalars()
        state["beta1_power"] = np.array(self.beta1_power, dtype=np.float32)
        state["beta2_power"] = np.array(self.beta2_power, dtype=np.float32)
        return state

    def _set_scalars(self, state):
        super()._set_scalars(state)
        self.beta1_power = np.float32(state["beta1_power"])
        self.beta2_power = np.float32(state["beta2_power"])


# ---- learning-rate schedules ---------------------------------------------------

def exponential_decay(learning_rate, global_step, decay_steps, decay_rate, staircase=False):
    """tf.compat.v1.train.exponential_decay evaluated at `global_step`, as a float32.

    lr = learning_rate * decay_rate ** p,  p = step / decay_steps (floored if staircase),
    all in float32 as TF does it (the step is cast to float32 first), with a subnormal
    operand or result read as 0, as TF's CPU kernels do: 0.01 * 0.5 ** 127.15 is 0, not 5.3e-41.
    The power is the C library's double pow of the float32 operands (numpy's float64 scalar
    power; it keeps TF's nan and inf for a negative rate or step), rounded once to float32:
    the same on every CPU, where numpy's float32 power takes a vectorized path on AVX-512 CPUs
    with its own last bit. TF's pow is Eigen's, faithfully rounded: the two agree to one ulp.
    """
    if decay_steps <= 0:
        raise ValueError(f"exponential_decay: decay_steps must be positive, got {decay_steps}")
    p = np.float32(global_step) / np.float32(decay_steps)
    if staircase:
        p = np.floor(p)
    with np.errstate(over="ignore"):   # a decay_rate above 1 raised far: inf, as in float32
        decayed = _flush_subnormal(np.float64(_flush_subnormal(decay_rate)) ** np.float64(p))
    return _flush_subnormal(_flush_subnormal(learning_rate) * decayed)


def _flush_subnormal(x):
    """x as a float32, 0 where it is subnormal (TF runs its CPU kernels with flush-to-zero)."""
    x = np.float32(x)
    return np.float32(0) * x if abs(x) < np.finfo(np.float32).tiny else x


class ExponentialDecay:
    """exponential_decay as a schedule: `ExponentialDecay(0.1, 136718, 0.1, True)(step)`."""

    def __init__(self, learning_rate, decay_steps, decay_rate, staircase=False):
        exponential_decay(learning_rate, 0, decay_steps, decay_rate, staircase)    # validates
        self.learning_rate, self.decay_steps = learning_rate, decay_steps
        self.decay_rate, self.staircase = decay_rate, staircase

    def __call__(self, step):
        return exponential_decay(self.learning_rate, step, self.decay_steps, self.decay_rate, self.staircase)


# ---- PyTorch's SGD with parameter groups (the fast CIFAR recipe) ----------------------

class SGD(Optimizer):
    """torch.optim.SGD(param_groups, lr, momentum, weight_decay=0, nesterov=False), stepped as
    torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) after every step.

    param_groups: Parameters or (name, Parameter) pairs, or a list of groups, each a dict
    {"params": [...], "lr": ..., "weight_decay": ...} whose missing keys take the defaults.
    Each step the group's lr * lr_lambda(step) is formed in float64 and, like every
    hyperparameter, rounded to the parameter's dtype (torch casts a step's scalars so).

    weight_decay is PyTorch's: g + weight_decay * var enters the momentum, L2 decay. The
    "decoupled" weight decay of airbench (airbench94.py's hyp comments) is a parametrisation of
    that: each group gets weight_decay = wd / lr, so lr * weight_decay = wd whatever its lr
    (not Loshchilov and Hutter's decoupled decay, which bypasses the gradient). Slot
    "<name>/momentum_buffer", torch's state name; buffers start at zero, so the first update
    gives buf = g', as torch's clone of the first gradient.
    """
    slot_names = ("momentum_buffer",)

    def __init__(self, param_groups, lr, momentum=0.0, weight_decay=0.0, nesterov=False, lr_lambda=None):
        groups = list(param_groups)
        if not groups or not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [dict(group, params=list(group.get("params", ()))) if isinstance(group, dict) else group
                  for group in groups]
        settings = []
        for k, group in enumerate(groups):
            if not isinstance(group, dict) or set(group) - {"params", "lr", "weight_decay"}:
                raise ValueError(f"SGD: param group {k} must be a dict of 'params' and optionally 'lr' and "
                                 f"'weight_decay', got {group!r:.80}")
            group_lr, wd = float(group.get("lr", lr)), float(group.get("weight_decay", weight_decay))
            if group_lr < 0 or wd < 0:
                raise ValueError(f"SGD: param group {k} has a negative lr or weight_decay: {group_lr}, {wd}")
            settings += [(group_lr, wd)] * len(group["params"])
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: Nesterov momentum needs a momentum > 0")
        super().__init__([p for group in groups for p in group["params"]], 1.0)
        self.settings, self.momentum, self.nesterov = settings, float(momentum), bool(nesterov)
        self.lr_lambda = lr_lambda

    def step(self):
        self._factor = float(self.lr_lambda(self.iterations)) if self.lr_lambda is not None else 1.0
        super().step()

    def _update(self, i, var, g, _, dtype):
        group_lr, wd = self.settings[i]
        lr = dtype(group_lr * self._factor)
        if wd:
            g = g + dtype(wd) * var
        if self.momentum:
            m, buf = dtype(self.momentum), self.slots["momentum_buffer"][i]
            buf *= m
            buf += g
            g = g + m * buf if self.nesterov else buf
        var -= lr * g


class Triangle:
    """airbench's triangle(total_steps, start, end, peak) as a schedule of the step: linear
    interpolation through (0, start), (int(peak * total_steps), 1), (total_steps, end), in
    float64 (airbench interpolates in float32); beyond total_steps the last segment goes on."""

    def __init__(self, total_steps, start=0.2, end=0.07, peak=0.23):
        peak_step = int(peak * total_steps)
        if not 0 < peak_step < total_steps:
            raise ValueError(f"Triangle: the peak int({peak} * {total_steps}) must fall strictly inside "
                             f"(0, {total_steps})")
        self.points = ((0, start), (peak_step, 1.0), (total_steps, end))

    def __call__(self, step):
        (x0, y0), (x1, y1), (x2, y2) = self.points
        if step < x1:
            return y0 + (y1 - y0) * step / x1
        return y1 + (y2 - y1) * (step - x1) / (x2 - x1)

"""tf.train.ExponentialMovingAverage of parameters (docs/tf-conventions.md#exponential-moving-average).

Floor: optim; imports the core (state), backend and numpy, never optim.py: it shares
the parameter-list check and the strict load with the optimizers through state.py.
Re-exported by tinybn.optim, whose public API it belongs to
(`tinybn.optim.ExponentialMovingAverage`); kept in its own file so each stays
short enough to read at once.
"""
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from .backend import array_module, to_numpy
from .state import checked_state, named_tensors


class ExponentialMovingAverage:
    """tf.train.ExponentialMovingAverage(decay, num_updates=None) of parameters (Variables).

        decay_t = min(decay, (1 + num_updates) / (10 + num_updates))   float32; decay if no num_updates
        shadow -= (shadow - var) * (1 - decay_t)

    A shadow starts as a copy of the parameter's value at its first apply(), so that
    apply leaves it equal to the parameter (TF's Variable rule; zero_debias does not
    apply to Variables). `num_updates` is a number, a callable returning one, or
    given per call as apply(params, num_updates=...). The CIFAR-10 tutorial averages
    after the optimizer step, with the *already incremented* global step:

        ema = ExponentialMovingAverage(0.9999, num_updates=lambda: opt.iterations)
        opt.step(); ema.apply(params)         # first update uses num_updates=1, decay 2/11

    Evaluate with the averages by `with ema.average_weights(params): ...`, which
    swaps the shadows into the parameters and swaps the originals back afterwards.
    """

    def __init__(self, decay, num_updates=None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ExponentialMovingAverage: decay must be in [0, 1], got {decay}")
        self.decay, self.num_updates = decay, num_updates
        self._entries = OrderedDict()     # id(param) -> [name, param, shadow, swapped]

    def effective_decay(self, num_updates=None):
        """decay_t as a float32, for the given (or the constructor's) num_updates."""
        n = self.num_updates if num_updates is None else num_updates
        n = n() if callable(n) else n
        decay = np.float32(self.decay)
        if n is None:
            return decay
        n = np.float32(n)
        return min(decay, (np.float32(1) + n) / (np.float32(10) + n))

    def _register(self, params, owner):
        """The entries of `params`, registering new ones (shadow = copy of the value)."""
        entries, names = [], {e[0] for e in self._entries.values()}
        for name, p in named_tensors(params, owner):
            entry = self._entries.get(id(p))
            if entry is None:
                name = str(len(self._entries)) if name is None else name
                if name in names:
                    raise ValueError(f"{owner}: a different parameter is already averaged as {name!r}")
                entry = self._entries[id(p)] = [name, p, p.data.copy(), False]
                names.add(name)
            entries.append(entry)
        return entries

    def apply(self, params, num_updates=None):
        """Update the shadow of each parameter (created at its first apply)."""
        decay = self.effective_decay(num_updates)
        one_minus = np.float32(1) - decay        # float32, as TF's `1.0 - decay` tensor
        entries = self._register(params, "ExponentialMovingAverage.apply")
        for name, p, shadow, swapped in entries:
            if swapped:
                raise RuntimeError(f"ExponentialMovingAverage.apply: {name!r} holds its average "
                                   "(inside average_weights/swap); swap back first")
            if shadow.shape != p.shape:
                raise ValueError(f"ExponentialMovingAverage.apply: {name!r} has shape {p.shape}, "
                                 f"its average {shadow.shape}")
            shadow -= (shadow - p.data) * p.dtype.type(one_minus)

    def _entry(self, param):
        entry = self._entries.get(id(param))
        if entry is None:
            raise ValueError("ExponentialMovingAverage: param is not averaged (apply() it first)")
        return entry

    def average(self, param):
        """The moving average of `param` (an array), wherever it currently lives."""
        name, p, shadow, swapped = self._entry(param)
        return p.data if swapped else shadow

    def _select(self, params):
        return [self._entry(p) for p in params] if params is not None else list(self._entries.values())

    def swap(self, params=None):
        """Exchange the values of `params` (default: all averaged) with their averages."""
        for entry in self._select(params):
            p = entry[1]
            p.data, entry[2] = entry[2], p.data
            entry[3] = not entry[3]
            p.mark_modified("ExponentialMovingAverage.swap()", entry[0])

    @contextmanager
    def average_weights(self, params=None):
        """Inside the block the parameters hold their averages; the originals come back after."""
        entries = self._select(params)
        if any(e[3] for e in entries):
            raise RuntimeError("ExponentialMovingAverage.average_weights: already swapped in")
        targets = [e[1] for e in entries]
        self.swap(targets)
        try:
            yield
        finally:
            self.swap(targets)

    # --- checkpoint state ---------------------------------------------------
    def state_dict(self):
        """{"<name>/ExponentialMovingAverage": numpy copy of the average} (TF's names)."""
        return OrderedDict((f"{e[0]}/ExponentialMovingAverage", np.array(to_numpy(self.average(e[1])), copy=True))
                           for e in self._entries.values())

    def load_state_dict(self, state, params=None):
        """Load averages, registering `params` first (as after a restart, before any apply)."""
        known = {e[0]: (e[1].shape, e[1].dtype) for e in self._entries.values()}
        pending = []
        for i, (name, p) in enumerate(named_tensors(params or [], "ExponentialMovingAverage.load_state_dict")):
            if id(p) not in self._entries:
                name = str(len(self._entries) + len(pending)) if name is None else name
                if name in known:
                    raise ValueError(f"ExponentialMovingAverage.load_state_dict: a different parameter "
                                     f"is already averaged as {name!r}")
                known[name] = (p.shape, p.dtype)
                pending.append((name, p))
        expected = OrderedDict((f"{n}/ExponentialMovingAverage", s) for n, s in known.items())
        arrays = checked_state("ExponentialMovingAverage.load_state_dict", expected, state)
        for name, p in pending:
            self._entries[id(p)] = [name, p, p.data.copy(), False]
        targets = [(e, e[1].data if e[3] else e[2]) for e in self._entries.values()]
        values = [array_module(target).asarray(arrays[f"{e[0]}/ExponentialMovingAverage"], dtype=target.dtype)
                  for e, target in targets]
        for (entry, target), value in zip(targets, values):
            target[...] = value
            if entry[3]:        # swapped in: the average being loaded is the parameter's value
                entry[1].mark_modified("ExponentialMovingAverage.load_state_dict", entry[0])
        return self

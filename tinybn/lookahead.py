"""The fast CIFAR recipe's Lookahead-style average of the weights (airbench94's LookaheadState).

Floor: optim; imports the core (state), backend and numpy. Re-exported by tinybn.optim.

Every floating-point parameter and buffer t of a module (BN's moving statistics too, as
airbench averages its whole state_dict) has a shadow s, a copy of t when the average starts.

    update(module, decay):   s = lerp(s, t, 1 - decay);  t = s          (both, in t's dtype)
    lerp(a, b, w)            = a + w (b - a)         when w < 0.5
                             = b - (b - a) (1 - w)   otherwise            (torch.lerp's two forms)

(torch's CPU kernel fuses the multiply-add, numpy rounds twice: an ulp apart at most.)

so the weights jump back to the average after each update: Lookahead's "k steps forward, 1
step back" (Zhang et al., arXiv:1907.08610, algorithm 1, with the slow weights as an EMA).
update(module, 1.0) only copies the shadows back, as airbench does after every epoch.

airbench's schedule (airbench_decay): from epoch 3 on, every 5 steps, decay
rho = 0.95**5 * (step / total_steps)**3: little averaging early, strong averaging at the end.
"""
from collections import OrderedDict

import numpy as np

from .backend import array_module, to_numpy
from .state import checked_state


def airbench_decay(step, total_steps, decay_base=0.95, every_n_steps=5, decay_pow=3.0):
    """rho = decay_base**every_n_steps * (step / total_steps)**decay_pow (airbench94's ema hyp)."""
    return decay_base ** every_n_steps * (step / total_steps) ** decay_pow


def _lerp(a, b, weight, dtype):
    w = dtype(weight)          # torch casts the weight to the tensors' dtype, then forms 1 - w there
    if w < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (dtype(1) - w)


class LookaheadAverage:
    """Shadows of a module's floating-point parameters and buffers, started from their values."""

    def __init__(self, module):
        self.names = [name for name, t in self._tensors(module)]
        self.shadow = OrderedDict((name, t.data.copy()) for name, t in self._tensors(module))

    @staticmethod
    def _tensors(module):
        return [(n, t) for n, t in list(module.named_parameters()) + list(module.named_buffers())
                if t.dtype.kind == "f"]

    def update(self, module, decay):
        """Move each shadow toward its tensor by 1 - decay, then set the tensor to the shadow."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"LookaheadAverage.update: decay must be in [0, 1], got {decay}")
        tensors = self._tensors(module)
        if [n for n, _ in tensors] != self.names:
            raise ValueError("LookaheadAverage.update: the module's tensors are not those the average started from")
        for name, t in tensors:
            shadow = _lerp(self.shadow[name], t.data, 1.0 - decay, t.dtype.type)
            self.shadow[name] = shadow
            t.data[...] = shadow
            t.mark_modified("LookaheadAverage.update()", name)

    def state_dict(self):
        return OrderedDict((name, np.array(to_numpy(s), copy=True)) for name, s in self.shadow.items())

    def load_state_dict(self, state):
        """Load shadows by name; any missing, unexpected or mis-shaped one changes nothing."""
        arrays = checked_state("LookaheadAverage.load_state_dict",
                               {k: (s.shape, s.dtype) for k, s in self.shadow.items()}, state)
        for name, s in self.shadow.items():
            self.shadow[name] = array_module(s).asarray(arrays[name], dtype=s.dtype).copy()
        return self

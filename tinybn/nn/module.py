"""Module: layers with explicit parameters, buffers, children and train/eval state.

Floor: nn; imports the core (tensor, state: the strict load check), backend and numpy.

    class Dense(Module):
        def __init__(self, ...):
            super().__init__()
            self.kernel = self.add_parameter("kernel", array)   # trained, has .grad
            self.moving_mean = self.add_buffer("moving_mean", array)  # state, no grad
            self.block = self.add_module("block", Sequential(...))

Everything is registered by an explicit call, so `grep add_parameter` finds every
trainable variable. Names are joined with "/" as TF scopes are
("conv1/kernel", "bn1/moving_variance"), which is also how `state_dict()` names
them. `train()` / `eval()` set `.training` on the module and all its children;
layers such as BatchNorm and Dropout read their own flag: there is no global
mode switch.
"""
from collections import OrderedDict

import numpy as np

from ..backend import array_module, device_array, to_numpy
from ..state import checked_state
from ..tensor import Tensor


class Parameter(Tensor):
    """A trainable tensor: always requires a gradient."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    def __init__(self):
        self._parameters = OrderedDict()
        self._buffers = OrderedDict()
        self._modules = OrderedDict()
        self.training = True

    # --- registration ------------------------------------------------------
    def add_parameter(self, name, data):
        _check_name(name, self)
        param = data if isinstance(data, Parameter) else Parameter(data)
        self._parameters[name] = param
        return param

    def add_buffer(self, name, data):
        _check_name(name, self)
        buf = Tensor(data)
        self._buffers[name] = buf
        return buf

    def add_module(self, name, module):
        _check_name(name, self)
        if not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}, ...) needs a Module, got {type(module).__name__}")
        self._modules[name] = module
        return module

    # --- traversal ---------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}{name}/")

    def named_children(self):
        return list(self._modules.items())

    def named_parameters(self):
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield prefix + name, p

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield prefix + name, b

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # --- mode --------------------------------------------------------------
    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def to_backend(self, name=None):
        """Move every parameter and buffer to backend `name`'s device (default: the current
        one): onto the GPU for "cupy", into host memory otherwise. Build optimizers after."""
        for _, t in list(self.named_parameters()) + list(self.named_buffers()):
            t.data = device_array(t.data, name)
        return self

    # --- state -------------------------------------------------------------
    def state_dict(self):
        """{name: numpy array copy} of every parameter and buffer."""
        state = OrderedDict()
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            state[name] = np.array(to_numpy(t.data), copy=True)
        return state

    def load_state_dict(self, state):
        """Load arrays by name. Missing, unexpected or mis-shaped entries, and values that are not
        real numbers (complex, string, None, object), are a ValueError that lists them all; every
        entry is checked before the first is assigned, so then nothing is changed."""
        owner = f"load_state_dict into {type(self).__name__}"
        targets = OrderedDict(list(self.named_parameters()) + list(self.named_buffers()))
        arrays = checked_state(owner, {k: (t.shape, t.dtype) for k, t in targets.items()}, state)
        values = {k: array_module(t.data).asarray(arrays[k], dtype=t.dtype).copy() for k, t in targets.items()}
        for name, t in targets.items():
            t.data = values[name]
            t.mark_modified(owner, name)
        return self

    # --- calling -----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self):
        return ""


def _check_name(name, module):
    if not name or "/" in name:
        raise ValueError(f"name {name!r} must be non-empty and contain no '/'")
    for table in (module._parameters, module._buffers, module._modules):
        if name in table:
            raise ValueError(f"{type(module).__name__} already has an entry named {name!r}")

"""What the owners of state (Module, the optimizers, ExponentialMovingAverage) share:
the strict load check, and the validated list of the parameters they are given.

Floor: core; imports tensor.py, arrays.py and numpy.

    pairs = named_tensors(params, "Momentum")    [(name or None, Tensor)], checked once

Strict loading of state dicts: every entry is checked before anything is assigned.

    arrays = checked_state("load_state_dict into Model", {key: (shape, dtype)}, state)

Module.load_state_dict, Optimizer.load_state_dict and
ExponentialMovingAverage.load_state_dict validate through this one function, then
assign. A refused load is a ValueError that lists every problem (missing keys,
unexpected keys, shape mismatches, unsupported dtypes), and nothing has changed.

Accepted values are real numbers: float, integer or unsigned arrays load into a
float target (cast to its dtype, as the loaders always did); integer targets (the
global step) take integers only. Refused by dtype: complex (a cast would silently
drop the imaginary part), strings, bools, None and object arrays (a cast would fail
halfway through the load, after earlier entries were assigned).
"""
from collections.abc import Mapping

import numpy as np

from .arrays import to_numpy
from .tensor import Tensor

_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu"}    # target dtype kind -> source kinds it takes
_KIND_NAMES = {"c": "complex", "U": "string", "S": "bytes", "O": "object", "b": "bool", "V": "structured",
               "M": "datetime", "m": "timedelta", "f": "float", "i": "integer", "u": "unsigned"}


def checked_state(owner, expected, state):
    """{key: host numpy array} of `state` for every key of `expected` ({key: (shape, dtype)}).

    Raises ValueError "<owner>: missing keys [...]; unexpected keys [...]; shape mismatch
    [...]; unsupported dtype [...]" when anything does not fit; the caller assigns only
    after this returned."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner}: state must be a dict of name -> array, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape, wrong_dtype, arrays = [], [], {}
    for key, (shape, dtype) in expected.items():
        if key not in state:
            continue
        value = state[key]
        try:
            array = np.asarray(value, dtype=object) if value is None else to_numpy(value)
        except (TypeError, ValueError):     # a ragged list, a mapping: not an array at all
            wrong_dtype.append(f"{key}: {type(value).__name__} is not an array")
            continue
        accepted = _ACCEPTED_KINDS[np.dtype(dtype).kind]
        if array.dtype.kind not in accepted:
            got = "None" if value is None else f"{_KIND_NAMES.get(array.dtype.kind, array.dtype.kind)} " \
                                               f"({array.dtype})"
            wrong_dtype.append(f"{key}: {got} cannot be loaded into {np.dtype(dtype)}")
        elif array.shape != tuple(shape):
            wrong_shape.append(f"{key}: expected {tuple(shape)}, got {array.shape}")
        arrays[key] = array
    problems = [f"{what} {items}" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape),
                 ("unsupported dtype", wrong_dtype)) if items]
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems))
    return arrays


def named_tensors(params, owner):
    """[(name or None, tensor)] of Parameters or (name, Parameter) pairs (as
    Module.named_parameters() yields them), each a floating-point Tensor, none twice;
    ValueError "<owner>: params[i] ..." otherwise."""
    out, names, ids = [], set(), set()
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        if not isinstance(p, Tensor):
            raise ValueError(f"{owner}: params[{i}] must be a Parameter (tinybn Tensor), got {type(p).__name__}")
        if p.dtype.kind != "f":
            raise ValueError(f"{owner}: params[{i}] must be floating point, got {p.dtype}")
        if id(p) in ids:
            raise ValueError(f"{owner}: params[{i}] appears more than once")
        if name is not None and name in names:
            raise ValueError(f"{owner}: parameter name {name!r} appears more than once")
        ids.add(id(p))
        names.add(name)
        out.append((name, p))
    return out

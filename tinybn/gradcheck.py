"""Finite-difference gradient checks: the independent reference for every backward.

    check_gradients(fn, *arrays, params=None)

`fn` takes Tensors and returns one Tensor. The check draws a random upstream
gradient G of the output's shape, so the scalar under test is L = sum(G * fn(x)),
runs tinybn's backward, and compares each input's gradient with the float64
central difference (L(x + h e_i) - L(x - h e_i)) / 2h. Inputs must be float64:
in float32 the difference quotient itself is only good to ~1e-3.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import numpy as np

from .tensor import Tensor


def numerical_gradient(loss, array, h=1e-6):
    """Central differences of the scalar function loss() w.r.t. `array`, in place."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        up = loss()
        flat[i] = saved - h
        down = loss()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * h)
    return grad


def check_gradients(fn, *arrays, rtol=1e-5, atol=1e-7, h=1e-6, seed=0, wrt=None):
    """Assert tinybn's gradients of fn equal float64 finite differences.

    wrt: indices of the arrays to differentiate (default: every float array).
    Returns the worst error found, as max|analytic - numeric| / max(1, max|numeric|).
    """
    arrays = [np.array(a, copy=True) for a in arrays]
    wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if wrt is None else list(wrt)
    for i in wrt:
        if arrays[i].dtype != np.float64:
            raise ValueError(f"check_gradients needs float64 inputs, argument {i} is {arrays[i].dtype}")
    tensors = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(upstream)

    def loss():
        return float(np.sum(upstream * fn(*[Tensor(a) for a in arrays]).data))

    worst = 0.0
    for i in wrt:
        numeric = numerical_gradient(loss, arrays[i], h)
        analytic = tensors[i].grad
        if analytic is None:
            analytic = np.zeros_like(numeric)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol * max(1.0, np.abs(numeric).max()),
                                   err_msg=f"gradient of argument {i}")
        worst = max(worst, float(np.abs(analytic - numeric).max() / max(1.0, np.abs(numeric).max())))
    return worst

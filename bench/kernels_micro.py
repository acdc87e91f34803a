"""Seconds per call of each hot primitive, numpy reference vs numba kernel, at the
CIFAR-10 tutorial's batch-128 shapes (float32). Not a test.

    python bench/kernels_micro.py [--repeat 5] [--threads 2]

Each case runs once to compile (or load numba's cache) and warm up, then reports
the best of --repeat calls of each implementation and the largest |difference|.
"""
import argparse
import time

import numpy as np

import tinybn.backend as backend
from tinybn.ops.padding import window_geometry


def geometry(shape, k, s=1):
    """The geometry.Window of a k x k, stride s, SAME window op over `shape`."""
    return window_geometry(shape[1:3], (k, k), (s, s), (1, 1), "SAME")


def cases(rng):
    f32 = np.float32

    def normal(*shape):
        return rng.standard_normal(shape).astype(f32)

    for shape in [(128, 24, 24, 3), (128, 12, 12, 64)]:
        g = geometry(shape, 5)
        cols = normal(shape[0] * g.OH * g.OW, 25 * shape[3])
        yield "im2col", f"{shape} 5x5 SAME", (normal(*shape), g)
        yield "col2im", f"{shape} 5x5 SAME", (cols, shape, g)
    for shape in [(128, 24, 24, 64), (128, 12, 12, 64)]:
        g = geometry(shape, 3, 2)
        x = normal(*shape)
        y, argmax = backend.implementation("max_pool_forward", "numpy")(x, g)
        yield "max_pool_forward", f"{shape} 3x3/2 SAME", (x, g)
        yield "max_pool_backward", f"{shape} 3x3/2 SAME", (normal(*y.shape), argmax, shape, g)
        yield "avg_pool_forward", f"{shape} 3x3/2 SAME", (x, g)
        yield "avg_pool_backward", f"{shape} 3x3/2 SAME", (normal(*y.shape), shape, g)
    for shape in [(128, 12, 12, 64), (128, 24, 24, 64)]:
        x = normal(*shape)
        y, norm = backend.implementation("lrn_forward", "numpy")(x, 4, 1.0, 0.001 / 9, 0.75)
        yield "lrn_forward", f"{shape} r=4", (x, 4, 1.0, 0.001 / 9, 0.75)
        yield "lrn_backward", f"{shape} r=4", (normal(*shape), x, y, norm, 4, 0.001 / 9, 0.75)
    for m in [128 * 24 * 24, 128 * 12 * 12]:
        x, scale, offset = normal(m, 64), normal(64), normal(64)
        _, mean, var, inv_std = backend.implementation("batch_norm_train_forward", "numpy")(x, scale, offset, 1e-3)
        yield "batch_norm_train_forward", f"({m}, 64)", (x, scale, offset, 1e-3)
        yield "batch_norm_train_backward", f"({m}, 64)", (normal(m, 64), x, scale, mean, inv_std)
        yield "batch_norm_inference", f"({m}, 64)", (x, scale, offset, mean, var, 1e-3)
    labels = np.eye(10, dtype=f32)[rng.integers(0, 10, 128)]
    yield "softmax_cross_entropy", "(128, 10)", (labels, normal(128, 10))


def best_time(fn, args, repeat):
    fn(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def max_difference(a, b):
    a, b = (a,) if isinstance(a, np.ndarray) else a, (b,) if isinstance(b, np.ndarray) else b
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))) for u, v in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    args = parser.parse_args()
    backend.use_backend("numba")
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    print(f"{'primitive':27s} {'shape':26s} {'numpy s':>9s} {'numba s':>9s} {'speedup':>7s} {'max |diff|':>10s}")
    for name, label, call in cases(np.random.default_rng(0)):
        ref, fast = backend.implementation(name, "numpy"), backend.implementation(name, "numba")
        t_ref, t_fast = best_time(ref, call, args.repeat), best_time(fast, call, args.repeat)
        diff = max_difference(ref(*call), fast(*call))
        print(f"{name:27s} {label:26s} {t_ref:9.5f} {t_fast:9.5f} {t_ref / t_fast:6.1f}x {diff:10.2e}")


if __name__ == "__main__":
    main()

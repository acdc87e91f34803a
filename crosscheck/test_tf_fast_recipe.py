"""The fast CIFAR recipe's optimizer and input pipeline against TF and Keras.

SGD (tinybn.optim.SGD, PyTorch's form) against Keras 3's SGD(momentum, nesterov). Keras keeps a
velocity v and PyTorch's form a buffer buf:

    Keras     v = m v - lr g;      var += m v - lr g   (nesterov)     var += v   (otherwise)
    tinybn    buf = m buf + g;     var -= lr (g + m buf)              var -= lr buf

At a constant lr, v = -lr buf at every step (both start at 0; induction:
m (-lr buf) - lr g = -lr (m buf + g)), and the two updates are the same numbers rounded in
another order. So the comparison is schedule-free: one Keras optimizer per parameter group at
that group's constant lr. Keras's weight_decay is decoupled (var -= lr wd var apart from the
gradient), PyTorch's enters the gradient: Keras is given g + wd var from its own variable.
The schedule (lr_lambda) and the decay's coupling have closed forms in tests/test_fast_optim.py.

The pipeline's reflect padding against tf.pad(mode="REFLECT"), its translations against
tf.image.crop_to_bounding_box of the padded images, and its flips against tf.image.flip_left_right.
"""
import numpy as np
import pytest
import tensorflow as tf

from tinybn import optim
from tinybn.data import fast_augment as aug
from tinybn.nn.module import Parameter

SHAPES = [(3, 4), (5,), (2, 2, 3)]
STEPS = 6
# (lr, weight_decay, parameters), airbench's decay wd / lr per group. Keras holds the lr as a float32
# variable and casts the momentum through a float32 constant, so lrs and momenta are exact in float32
# (0.1 and 0.85 would move float64 results by ~1e-7)
GROUPS = [(0.125, 5e-4 / 0.125, [0, 1]), (8.0, 5e-4 / 8.0, [2])]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-14), (np.float32, 2e-6)])
@pytest.mark.parametrize("nesterov, momentum", [(True, 0.875), (False, 0.75), (False, 0.0)])
def test_sgd_matches_keras(dtype, rtol, nesterov, momentum):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    ours = [Parameter(a.copy()) for a in init]
    theirs = [tf.Variable(a.copy()) for a in init]
    opt = optim.SGD([{"params": [ours[i] for i in idx], "lr": lr, "weight_decay": wd} for lr, wd, idx in GROUPS],
                    lr=0.1, momentum=momentum, nesterov=nesterov)
    keras = [tf.keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov) for lr, _, _ in GROUPS]
    for k, (lr, _, idx) in enumerate(GROUPS):
        keras[k].build([theirs[i] for i in idx])
    for step in range(STEPS):
        skipped = 1 if step == 2 else None             # a parameter without a gradient is left alone by both
        for i, p in enumerate(ours):
            p.grad = None if i == skipped else grads[step][i].copy()
        opt.step()
        for k, (_, wd, idx) in enumerate(GROUPS):
            pairs = [(tf.constant(grads[step][i] + dtype(wd) * theirs[i].numpy()), theirs[i])
                     for i in idx if i != skipped]
            keras[k].apply_gradients(pairs)
    for p, v in zip(ours, theirs):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, v.numpy(), rtol=rtol, atol=rtol)
    if momentum:
        names = iter(opt.names)
        for k, (lr, _, idx) in enumerate(GROUPS):
            for i in idx:
                buf = opt.state_dict()[f"{next(names)}/momentum_buffer"]
                velocity = keras[k].momentums[idx.index(i)].numpy()
                np.testing.assert_allclose(-dtype(lr) * buf, velocity, rtol=rtol, atol=rtol)


def _images(n=6, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("pad", [1, 2])
def test_reflect_pad_and_translate_match_tf(pad):
    x = _images()
    padded = aug.reflect_pad(x, pad)
    np.testing.assert_array_equal(padded, tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT"))
    shifts = np.random.default_rng(pad).integers(-pad, pad + 1, (len(x), 2))
    out = aug.translate(padded, shifts, pad)
    for k, (sy, sx) in enumerate(shifts):
        want = tf.image.crop_to_bounding_box(padded[k], pad + sy, pad + sx, x.shape[1], x.shape[2])
        np.testing.assert_array_equal(out[k], want)


def test_flips_match_tf():
    x = _images(n=20)
    base = aug.base_flips(20, seed=4)
    for epoch in (0, 1):
        flips = aug.alternating_flips(base, epoch)
        want = np.where(flips[:, None, None, None], tf.image.flip_left_right(x).numpy(), x)
        np.testing.assert_array_equal(aug.epoch_images(x, epoch, seed=4, pad=0), want)

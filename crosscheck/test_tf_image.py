"""CIFAR-10 preprocessing (tinybn.data.image) against tf.image, given the same random draws.

TF's random ops cannot be replayed in numpy, so each tinybn transform is fed the
draws explicitly and TF runs the deterministic twin of its random op with those
same draws: crop_to_bounding_box for random_crop, flip_left_right (or not) for
random_flip_left_right, adjust_brightness(delta) for random_brightness,
adjust_contrast(factor) for random_contrast. Inputs are float32 on 0..255, as in
cifar10_input.py. Forward only: preprocessing has no gradient.
"""
import numpy as np
import tensorflow as tf
from hypothesis import given, strategies as st

import parity
from tinybn.data import image

EXACT = "adjust_brightness/crop/flip"


def pixels(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


def per_image_tf(fn, x, *draws):
    """Apply a TF op image by image with that image's draws (TF takes one scalar per call)."""
    return np.stack([fn(tf.constant(img), *(d[i] for d in draws)).numpy() for i, img in enumerate(x)])


@given(seed=st.integers(0, 2**16), n=st.integers(1, 3), h=st.integers(2, 36), w=st.integers(2, 36))
def test_crop_flip_brightness(seed, n, h, w):
    x = pixels(seed, (n, h, w, 3))
    rng = np.random.default_rng(seed)
    th, tw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    oh, ow = rng.integers(0, h - th + 1, n), rng.integers(0, w - tw + 1, n)
    flip = rng.random(n) < 0.5
    delta = rng.uniform(-63, 63, n).astype(np.float32)
    parity.assert_parity(EXACT, "forward", image.crop_to_bounding_box(x, oh, ow, th, tw),
                         per_image_tf(lambda im, a, b: tf.image.crop_to_bounding_box(im, a, b, th, tw), x, oh, ow),
                         "crop_to_bounding_box")
    ours_flip = image.flip_left_right(x, flip)
    theirs_flip = per_image_tf(lambda im, f: tf.image.flip_left_right(im) if f else im, x, flip)
    parity.assert_parity(EXACT, "forward", ours_flip, theirs_flip, "flip_left_right")
    parity.assert_parity(EXACT, "forward", image.flip_left_right(x), tf.image.flip_left_right(x).numpy(),
                         "flip_left_right, whole batch")
    parity.assert_parity(EXACT, "forward", image.adjust_brightness(x, delta),
                         per_image_tf(tf.image.adjust_brightness, x, delta), "adjust_brightness")
    parity.assert_parity(EXACT, "forward", image.resize_with_crop_or_pad(x, 24, 24),
                         tf.image.resize_with_crop_or_pad(x, 24, 24).numpy(), "resize_with_crop_or_pad")


@given(seed=st.integers(0, 2**16), n=st.integers(1, 3), h=st.integers(1, 32), w=st.integers(1, 32),
       c=st.integers(1, 4))
def test_adjust_contrast(seed, n, h, w, c):
    x = pixels(seed, (n, h, w, c)) + np.float32(np.random.default_rng(seed).uniform(-63, 63))
    factor = np.random.default_rng(seed + 1).uniform(0.2, 1.8, n).astype(np.float32)
    parity.assert_parity("adjust_contrast", "forward", image.adjust_contrast(x, factor),
                         per_image_tf(tf.image.adjust_contrast, x, factor))
    parity.assert_parity("adjust_contrast", "forward", image.adjust_contrast(x, factor[0]),
                         tf.image.adjust_contrast(x, factor[0]).numpy(), "one factor for the batch")


@given(seed=st.integers(0, 2**16), n=st.integers(1, 4), h=st.integers(1, 32), w=st.integers(1, 32),
       c=st.integers(1, 4), scale=st.sampled_from([1.0, 1e-3, 1e-6]))
def test_per_image_standardization(seed, n, h, w, c, scale):
    # small scales put the std below 1/sqrt(N) for some shapes: the floor branch
    x = (pixels(seed, (n, h, w, c)) * np.float32(scale)).astype(np.float32)
    parity.assert_parity("per_image_standardization", "forward", image.per_image_standardization(x),
                         tf.image.per_image_standardization(x).numpy())
    uint8 = pixels(seed, (h, w, c), np.uint8)
    parity.assert_parity("per_image_standardization", "forward", image.per_image_standardization(uint8),
                         tf.image.per_image_standardization(uint8).numpy(), "uint8 input")


def tf_train_pipeline(img, oh, ow, flip, delta, factor):
    """cifar10_input.py's distorted_inputs for one image, with the draws fixed."""
    x = tf.image.crop_to_bounding_box(tf.cast(img, tf.float32), oh, ow, 24, 24)
    x = tf.image.flip_left_right(x) if flip else x
    x = tf.image.adjust_brightness(x, delta)
    x = tf.image.adjust_contrast(x, factor)
    return tf.image.per_image_standardization(x)


@given(seed=st.integers(0, 2**16), n=st.integers(1, 6))
def test_cifar10_train_and_eval_pipelines(seed, n):
    x = pixels(seed, (n, 32, 32, 3), np.uint8)
    draws = image.draw_train_params(np.random.default_rng(seed), n)
    ours = image.apply_train_transform(x, draws)
    theirs = per_image_tf(tf_train_pipeline, x, draws["offset_height"], draws["offset_width"],
                          draws["flip"], draws["delta"], draws["contrast_factor"])
    parity.assert_parity("cifar10 train preprocessing", "forward", ours, theirs)
    np.testing.assert_array_equal(image.train_transform(x, np.random.default_rng(seed)), ours)
    theirs_eval = tf.image.per_image_standardization(
        tf.image.resize_with_crop_or_pad(tf.cast(x, tf.float32), 24, 24)).numpy()
    parity.assert_parity("cifar10 eval preprocessing", "forward", image.eval_transform(x), theirs_eval)

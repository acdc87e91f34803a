"""The tutorial's summaries against TensorFlow's own ops: the pixels of tf.summary.image, the
tags TF's summary ops give the loss terms' " (raw)" names, tf.nn.zero_fraction."""
import io
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tinybn.summary import image_uint8


def tf_summary(op, *args):
    with warnings.catch_warnings():   # no TF2 default writer is set, which is irrelevant here
        warnings.simplefilter("ignore")
        return tf.compat.v1.Summary.FromString(op(*args).numpy())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["standardized", "non-negative", "tiny", "uint8"])
def test_images_are_tf_image_summary_pixels(kind, seed):
    rng = np.random.default_rng(seed)
    batch = rng.normal(size=(3, 24, 24, 3)).astype(np.float32)
    if kind == "non-negative":
        batch = np.abs(batch)
    elif kind == "tiny":                        # under TF's zero threshold: scale 0
        batch = batch * np.float32(1e-7)
    elif kind == "uint8":
        batch = rng.integers(0, 256, size=(3, 24, 24, 3)).astype(np.uint8)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:     # the image op has no eager kernel
        serialized = sess.run(tf.compat.v1.summary.image("images", tf.constant(batch)))
    values = tf.compat.v1.Summary.FromString(serialized).value
    assert [v.tag for v in values] == ["images/image/0", "images/image/1", "images/image/2"]
    for image, v in zip(batch, values):
        pixels = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
        np.testing.assert_array_equal(image_uint8(image), pixels)


@pytest.mark.parametrize("name", ["total_loss", "cross_entropy", "local3/weight_loss"])
def test_raw_loss_tags_are_tf_clean_tags(name):
    (value,) = tf_summary(tf.compat.v1.summary.scalar, name + " (raw)", tf.constant(1.0)).value
    assert value.tag == f"{name}__raw_"          # the tag tinybn's write_summaries writes


def test_sparsity_is_tf_zero_fraction():
    x = np.maximum(np.random.default_rng(1).normal(size=(4, 24, 24, 64)).astype(np.float32), 0)
    assert float(np.mean(x == 0)) == pytest.approx(float(tf.nn.zero_fraction(x)), abs=1e-7)

"""CIFAR-10 tutorial preprocessing (cifar10_input.py), one tf.image twin per function.

Shapes: a batch (N, H, W, C) or one image (H, W, C), NHWC; crop size TH x TW.
Values are float32 on the 0..255 scale: uint8 input is cast, never divided by 255.

    crop_to_bounding_box      x[oh:oh+TH, ow:ow+TW], per-image offsets allowed
    flip_left_right           x[:, ::-1] where flip is true (per image)
    adjust_brightness         y = x + delta, one delta per image, no clipping
    adjust_contrast           y = (x - m) * f + m, m = mean over H, W per image
                              and channel (TF's AdjustContrastv2), no clipping
    per_image_standardization y = (x - m) / max(s, 1/sqrt(H*W*C)), m and s the
                              mean and population std over H*W*C of each image
    resize_with_crop_or_pad   centre crop from (in - target)//2, or pad
                              (target - in)//2 zeros before; 32 -> 24 keeps 4..27

Train: random crop 24x24 (offsets uniform in 0..8 per dim), random flip
(probability 1/2), brightness delta ~ U[-63, 63), contrast factor ~ U[0.2, 1.8),
standardization. Eval: resize_with_crop_or_pad(24, 24), standardization.

TF's random streams cannot be reproduced in numpy, so every transform takes its
random draws as explicit arguments (which is how the crosscheck compares them
with tf.image); `draw_train_params` makes the draws from a numpy Generator and
`train_transform` applies them to a whole batch at once. Every step is per image, so the draws
of a batch applied to some of its images give those images' rows bitwise (`rowwise` says so).

This is host-side input code: it runs on numpy arrays before a batch becomes a
Tensor, so it uses numpy directly. Means are accumulated in float64 and rounded
to the image dtype (TF's Eigen tree sums are as accurate, numpy's float32 sums
over non-contiguous axes are not).

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import numpy as np

CROP_SIZE = 24
MAX_DELTA = 63.0
CONTRAST_LOWER, CONTRAST_UPPER = 0.2, 1.8


def _as_batch(images, name="images"):
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
    return (images, False) if images.ndim == 4 else (images[None], True)


def _per_image(value, n, name, dtype=None):
    value = np.asarray(value, dtype=dtype)
    if value.ndim == 0:
        return np.broadcast_to(value, (n,))
    if value.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one entry per image ({n}), got shape {value.shape}")
    return value


def _float(images):
    return images if images.dtype.kind == "f" else images.astype(np.float32)


def _result(batch, single):
    return batch[0] if single else batch


def crop_to_bounding_box(images, offset_height, offset_width, target_height, target_width):
    """images[oh:oh+th, ow:ow+tw] of each image; the offsets may differ per image."""
    x, single = _as_batch(images)
    n, h, w = x.shape[:3]
    oh = _per_image(offset_height, n, "offset_height").astype(np.intp)
    ow = _per_image(offset_width, n, "offset_width").astype(np.intp)
    if target_height < 1 or target_width < 1:
        raise ValueError(f"target size must be positive, got {target_height}x{target_width}")
    if oh.min() < 0 or ow.min() < 0 or oh.max() + target_height > h or ow.max() + target_width > w:
        raise ValueError(f"crop offsets ({oh.min()}..{oh.max()}, {ow.min()}..{ow.max()}) with size "
                         f"{target_height}x{target_width} do not fit images of {h}x{w}")
    # a loop of slices copies 1/3 of what a fancy-index gather of (N, TH, TW) would move
    out = np.stack([img[a:a + target_height, b:b + target_width] for img, a, b in zip(x, oh, ow)])
    return _result(out, single)


def flip_left_right(images, flip=True):
    """Mirror the width axis of the images whose `flip` entry is true."""
    x, single = _as_batch(images)
    flip = _per_image(flip, len(x), "flip", dtype=bool)
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return _result(out, single)


def adjust_brightness(images, delta):
    """images + delta (one delta per image or one for all), float, not clipped."""
    x, single = _as_batch(images)
    x = _float(x)
    delta = _per_image(delta, len(x), "delta", dtype=x.dtype)
    return _result(x + delta[:, None, None, None], single)


def adjust_contrast(images, contrast_factor):
    """(x - mean) * factor + mean, the mean taken over H, W for each image and channel."""
    x, single = _as_batch(images)
    x = _float(x)
    f = _per_image(contrast_factor, len(x), "contrast_factor", dtype=x.dtype)[:, None, None, None]
    n, h, w, c = x.shape
    sums = np.einsum("nkc->nc", x.reshape(n, h * w, c).astype(np.float64))
    mean = (sums / (h * w)).astype(x.dtype)[:, None, None, :]
    return _result((x - mean) * f + mean, single)


def per_image_standardization(images):
    """(x - mean) / max(std, 1/sqrt(H*W*C)) per image; population std (ddof 0)."""
    x, single = _as_batch(images)
    x = _float(x)
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=1, keepdims=True)
    centred = flat - mean
    std = np.sqrt(np.einsum("ij,ij->i", centred, centred)[:, None] / flat.shape[1])
    std = np.maximum(std, 1.0 / np.sqrt(flat.shape[1]))
    shape = (len(x), 1, 1, 1)
    return _result((x - mean.astype(x.dtype).reshape(shape)) / std.astype(x.dtype).reshape(shape), single)


def resize_with_crop_or_pad(images, target_height, target_width):
    """Centre-crop or zero-pad each spatial dimension to the target size, as TF does."""
    x, single = _as_batch(images)
    if target_height < 1 or target_width < 1:
        raise ValueError(f"target size must be positive, got {target_height}x{target_width}")
    slices, pads = [slice(None)], [(0, 0)]
    for size, target in ((x.shape[1], target_height), (x.shape[2], target_width)):
        start = max(size - target, 0) // 2
        before = max(target - size, 0) // 2
        slices.append(slice(start, start + min(size, target)))
        pads.append((before, max(target - size, 0) - before))
    out = np.pad(x[tuple(slices)], pads + [(0, 0)])
    return _result(out, single)


def draw_train_params(rng, n, image_height=32, image_width=32, crop_size=CROP_SIZE,
                      max_delta=MAX_DELTA, lower=CONTRAST_LOWER, upper=CONTRAST_UPPER):
    """The random draws of the train pipeline for `n` images, from numpy Generator `rng`."""
    if image_height < crop_size or image_width < crop_size:
        raise ValueError(f"images of {image_height}x{image_width} are smaller than crop_size {crop_size}")
    return {
        "offset_height": rng.integers(0, image_height - crop_size + 1, size=n),
        "offset_width": rng.integers(0, image_width - crop_size + 1, size=n),
        "flip": rng.random(n) < 0.5,
        "delta": rng.uniform(-max_delta, max_delta, size=n).astype(np.float32),
        "contrast_factor": rng.uniform(lower, upper, size=n).astype(np.float32),
    }


def apply_train_transform(images, params, crop_size=CROP_SIZE):
    """The train pipeline with the given draws: crop, flip, brightness, contrast, standardize."""
    x = crop_to_bounding_box(images, params["offset_height"], params["offset_width"], crop_size, crop_size)
    x = flip_left_right(_float(x), params["flip"])   # crop before the cast: 1/1.8 of the bytes
    x = adjust_brightness(x, params["delta"])
    x = adjust_contrast(x, params["contrast_factor"])
    return per_image_standardization(x)


def rowwise(draw, apply):
    """Declare that transform(images, rng) == apply(images, draw(rng, len(images), images.shape[1:]))
    with output row i a function of images[i] and entry i of every params array alone (a dict of
    arrays with one entry per row). A ShuffleQueue shard then draws a chunk's params whole, from the
    chunk's Generator as the single process does, and applies them to its own rows only."""
    def declare(transform):
        transform.rowwise = (draw, apply)
        return transform
    return declare


def _draw_for_chunk(rng, n, image_shape):
    return draw_train_params(rng, n, image_shape[0], image_shape[1])


@rowwise(_draw_for_chunk, apply_train_transform)
def train_transform(images, rng, crop_size=CROP_SIZE):
    """Randomly distorted float32 (N, 24, 24, C) training images from uint8 (N, H, W, C)."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be a batch (N, H, W, C), got shape {x.shape}")
    params = draw_train_params(rng, len(x), x.shape[1], x.shape[2], crop_size)
    return apply_train_transform(x, params, crop_size)


def eval_transform(images, crop_size=CROP_SIZE):
    """Centre 24x24 crop and standardization: float32 (N, 24, 24, C) from (N, H, W, C)."""
    x = resize_with_crop_or_pad(images, crop_size, crop_size)
    return per_image_standardization(_float(x))

"""The fast CIFAR recipe's input pipeline (airbench94's CifarLoader): alternating flips, 2-pixel
translations of reflect-padded images, per-epoch order, the normalisation, and flip + translate
test-time augmentation.

Shapes: images (N, H, W, C), NHWC, any dtype (the spatial steps commute with the per-channel
normalisation, so they can run on the uint8 images and each batch be normalised after).

    normalize(x)        (x / 255 - mean) / std per channel, float32; airbench's CIFAR mean
                        (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616)
    base_flips(n, seed) one coin per image, drawn once (airbench pre-flips the set at epoch 0)
    alternating_flips   epoch e flips image i iff base[i] xor (e is odd): every image is seen
                        flipped in exactly one of any two consecutive epochs (airbench's
                        "alternating flip", the derandomised flip of arXiv:2404.00498)
    reflect_pad(x, r)   r pixels on each side of H and W, mirrored without repeating the
                        edge (torch.nn.functional.pad(mode="reflect"), numpy's "reflect")
    translate(p, s, r)  crop (H, W) of the padded p at offset (r + s_y, r + s_x) per image,
                        shifts s in [-r, r]^2 drawn uniformly per image and epoch (batch_crop)
    epoch_images        an epoch's training set: base flips, pad, translate, then the odd
                        epochs' flip of everything, in airbench's order (alternating=False:
                        a fresh coin per image and epoch instead, airbench's altflip=False)
    epoch_batches       a permutation of the N indices per epoch, cut into full batches (the
                        last partial batch dropped, as airbench's drop_last)
    FastBatches         the training input as the trainer reads it: next_batch() gives the
                        next full batch of the current epoch (normalised float32, int32 labels),
                        state_dict() where it is (epoch, batch), from which it resumes exactly
    tta_logits          airbench's tta_level 2: 0.5 * mirror(x) + 0.5 * mean over the two
                        views translated by (-1, -1) and (+1, +1) (reflect pad 1) of mirror,
                        mirror(v) = 0.5 * (predict(v) + predict(flip(v))); level 1: mirror;
                        level 0: predict

Every draw comes from numpy Generators seeded by (seed, epoch) or (seed,), so an epoch's images
and order are the same for a seed whichever epoch a run starts from. airbench's draws come
from torch's generator on the GPU and cannot be reproduced; the distributions are the same.

Floor: data (tests/test_layering.py): imports numpy only.
"""
import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TRANSLATE = 2


def normalize(images):
    """(images / 255 - mean) / std per channel, as float32 (N, H, W, 3)."""
    x = np.asarray(images, np.float32) / np.float32(255)
    return (x - np.asarray(CIFAR_MEAN, np.float32)) / np.asarray(CIFAR_STD, np.float32)


def base_flips(n, seed):
    """Whether each of n images starts flipped: a fair coin each, drawn once for the seed."""
    # a stream of its own: the epochs' draws come from (seed, epoch, k)
    return np.random.default_rng([seed, 0]).random(n) < 0.5


def alternating_flips(base, epoch):
    """The flips of `epoch`: the base coins, inverted on odd epochs."""
    return base ^ bool(epoch % 2)


def flip_left_right(images, flip):
    """images[i, :, ::-1] where flip[i], else images[i]."""
    return np.where(np.asarray(flip)[:, None, None, None], images[:, :, ::-1], images)


def reflect_pad(images, pad):
    """Reflect-pad H and W by `pad` on each side (edge not repeated): (N, H + 2 pad, W + 2 pad, C)."""
    if pad >= min(images.shape[1:3]):
        raise ValueError(f"reflect_pad: pad {pad} must be smaller than the image size {images.shape[1:3]}")
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def draw_shifts(rng, n, pad):
    """(n, 2) integer shifts (s_y, s_x), each uniform in [-pad, pad]."""
    return rng.integers(-pad, pad + 1, size=(n, 2))


def translate(padded, shifts, pad):
    """Crop each padded image at (pad + s_y, pad + s_x) to the unpadded size, one shift per image."""
    n, ph, pw, c = padded.shape
    h, w = ph - 2 * pad, pw - 2 * pad
    shifts = np.asarray(shifts)
    if shifts.shape != (n, 2) or np.abs(shifts).max(initial=0) > pad:
        raise ValueError(f"translate: shifts must be (N, 2) = ({n}, 2) integers in [-{pad}, {pad}], "
                         f"got shape {shifts.shape}")
    out = np.empty((n, h, w, c), padded.dtype)
    for sy in range(-pad, pad + 1):          # one slice per shift, as airbench's batch_crop
        for sx in range(-pad, pad + 1):
            rows = np.flatnonzero((shifts[:, 0] == sy) & (shifts[:, 1] == sx))
            out[rows] = padded[rows, pad + sy:pad + sy + h, pad + sx:pad + sx + w]
    return out


def random_flips(n, epoch, seed):
    """altflip=False's flips of `epoch`: a fresh fair coin per image (airbench's batch_flip_lr)."""
    return np.random.default_rng([seed, epoch, 3]).random(n) < 0.5


def epoch_images(images, epoch, seed, flip=True, pad=TRANSLATE, alternating=True):
    """The training images of `epoch` (0-based), augmented as airbench's CifarLoader does;
    alternating=False: its altflip=False (airbench/utils.py), the random flip of every epoch
    applied after the base flip and the translation."""
    x = flip_left_right(images, base_flips(len(images), seed)) if flip else images
    if pad:
        shifts = draw_shifts(np.random.default_rng([seed, epoch, 1]), len(images), pad)
        x = translate(reflect_pad(x, pad), shifts, pad)
    if flip and not alternating:
        x = flip_left_right(x, random_flips(len(images), epoch, seed))
    elif flip and epoch % 2 == 1:
        x = x[:, :, ::-1]
    return x


def epoch_batches(n, batch_size, epoch, seed):
    """The index arrays of `epoch`'s full batches: a permutation of range(n), the rest dropped."""
    order = np.random.default_rng([seed, epoch, 2]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class FastBatches:
    """airbench's training batches, epoch after epoch, resumable from state_dict().

    images (N, H, W, C) uint8 (augmented as uint8, normalised per batch), labels (N,).
    An epoch's images and order are recomputed from (seed, epoch) when it starts, so a
    resumed run sees the batches the uninterrupted one would have.
    """

    def __init__(self, images, labels, batch_size, seed=0, flip=True, pad=TRANSLATE, state=None, alternating=True):
        if len(images) != len(labels):
            raise ValueError(f"FastBatches: images and labels differ in length: {len(images)} vs {len(labels)}")
        if not 1 <= batch_size <= len(images):
            raise ValueError(f"FastBatches: batch_size must be in [1, {len(images)}] (the number of images), "
                             f"got {batch_size}")
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.batch_size, self.seed, self.flip, self.pad = batch_size, seed, flip, pad
        self.alternating = alternating
        state = state or {"epoch": 0, "batch": 0}
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._epoch_loaded = None

    @property
    def batches_per_epoch(self):
        return len(self.images) // self.batch_size

    def next_batch(self):
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        if self._epoch_loaded != self.epoch:
            self._images = epoch_images(self.images, self.epoch, self.seed, self.flip, self.pad, self.alternating)
            self._order = epoch_batches(len(self.images), self.batch_size, self.epoch, self.seed)
            self._epoch_loaded = self.epoch
        rows = self._order[self.batch]
        self.batch += 1
        return normalize(self._images[rows]), self.labels[rows]

    def state_dict(self):
        return {"epoch": np.array(self.epoch, np.int64), "batch": np.array(self.batch, np.int64)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tta_logits(predict, images, level=2):
    """Test-time augmentation of `predict` (images -> logits array), airbench's tta_level 0, 1, 2."""
    if level not in (0, 1, 2):
        raise ValueError(f"tta_logits: level must be 0 (none), 1 (mirror) or 2 (mirror + translate), got {level}")
    if level == 0:
        return predict(images)

    def mirror(x):
        return 0.5 * predict(x) + 0.5 * predict(x[:, :, ::-1])
    logits = mirror(images)
    if level == 1:
        return logits
    padded = reflect_pad(images, 1)
    h, w = images.shape[1:3]
    translated = [mirror(padded[:, 0:h, 0:w]), mirror(padded[:, 2:h + 2, 2:w + 2])]
    return 0.5 * logits + 0.5 * (0.5 * (translated[0] + translated[1]))

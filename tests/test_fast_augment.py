"""The fast CIFAR recipe's input pipeline against closed forms: reflect padding, translation by
index arithmetic, alternating flips, per-seed determinism, uniform shifts, epoch batches, the
normalisation and test-time augmentation. Padding, translation and flips against tf.pad and
tf.image: crosscheck/test_tf_fast_recipe.py."""
import numpy as np
import pytest

from tinybn.data import fast_augment as aug


def _images(n=6, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


def _reflect(i, size):
    """Mirror index i into [0, size) without repeating the edge."""
    return -i if i < 0 else 2 * (size - 1) - i if i >= size else i


@pytest.mark.parametrize("pad", [1, 2])
def test_reflect_pad_closed_form(pad):
    x = _images()
    p = aug.reflect_pad(x, pad)
    h, w = x.shape[1:3]
    for i in range(-pad, h + pad):
        for j in range(-pad, w + pad):
            np.testing.assert_array_equal(p[:, i + pad, j + pad], x[:, _reflect(i, h), _reflect(j, w)])


def test_translate_is_a_shifted_reflected_view():
    x = _images()
    shifts = np.array([[0, 0], [-2, 2], [2, -2], [1, 0], [0, -1], [-2, -2]])
    out = aug.translate(aug.reflect_pad(x, 2), shifts, 2)
    n, h, w, _ = x.shape
    for k, (sy, sx) in enumerate(shifts):
        for i in range(h):
            for j in range(w):
                np.testing.assert_array_equal(out[k, i, j], x[k, _reflect(i + sy, h), _reflect(j + sx, w)])
    np.testing.assert_array_equal(out[0], x[0])


def test_alternating_flips():
    """The same base coins every epoch, inverted on odd ones: each image is flipped in exactly
    one of two consecutive epochs."""
    base = aug.base_flips(1000, seed=3)
    assert 400 < base.sum() < 600
    for epoch in range(4):
        flips = aug.alternating_flips(base, epoch)
        np.testing.assert_array_equal(flips, base if epoch % 2 == 0 else ~base)
        assert (flips ^ aug.alternating_flips(base, epoch + 1)).all()


def test_epoch_images_without_translation_are_the_alternating_flips():
    x = _images(n=50)
    base = aug.base_flips(50, seed=1)
    for epoch in (0, 1, 2):
        want = np.where(aug.alternating_flips(base, epoch)[:, None, None, None], x[:, :, ::-1], x)
        np.testing.assert_array_equal(aug.epoch_images(x, epoch, seed=1, pad=0), want)
    np.testing.assert_array_equal(aug.epoch_images(x, 1, seed=1, flip=False, pad=0), x)


def test_epoch_images_are_deterministic_per_seed_and_epoch():
    x = _images(n=40)
    a, b = aug.epoch_images(x, 3, seed=7), aug.epoch_images(x, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, aug.epoch_images(x, 3, seed=8))
    assert not np.array_equal(aug.epoch_images(x, 5, seed=7), aug.epoch_images(x, 7, seed=7))
    assert a.shape == x.shape and a.dtype == x.dtype


def test_shifts_are_uniform_over_the_25_offsets():
    shifts = aug.draw_shifts(np.random.default_rng(0), 25000, 2)
    counts = np.zeros((5, 5), int)
    np.add.at(counts, (shifts[:, 0] + 2, shifts[:, 1] + 2), 1)
    assert counts.min() > 850 and counts.max() < 1150       # 1000 each; 5 sigma is 155


def test_epoch_batches():
    batches = aug.epoch_batches(10, 4, epoch=0, seed=0)
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(np.concatenate(batches))) == 8
    again = aug.epoch_batches(10, 4, epoch=0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    full = np.concatenate(aug.epoch_batches(12, 4, epoch=1, seed=0))
    np.testing.assert_array_equal(np.sort(full), np.arange(12))


def test_normalize_closed_form():
    x = np.array([[[[0, 255, 128]]]], np.uint8)
    want = [(0 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, (128 / 255 - 0.4465) / 0.2616]
    got = aug.normalize(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-6)


def test_tta_levels():
    """A linear predict makes each level a closed form of views."""
    x = np.random.default_rng(1).standard_normal((3, 6, 6, 3))
    weights = np.random.default_rng(2).standard_normal((6 * 6 * 3, 10))

    def predict(v):
        return v.reshape(len(v), -1) @ weights
    flip = x[:, :, ::-1]
    p = aug.reflect_pad(x, 1)
    up, down = p[:, 0:6, 0:6], p[:, 2:8, 2:8]
    mirror = lambda v: 0.5 * (predict(v) + predict(v[:, :, ::-1]))      # noqa: E731
    np.testing.assert_array_equal(aug.tta_logits(predict, x, 0), predict(x))
    np.testing.assert_allclose(aug.tta_logits(predict, x, 1), 0.5 * (predict(x) + predict(flip)), rtol=1e-14)
    np.testing.assert_allclose(aug.tta_logits(predict, x, 2),
                               0.5 * mirror(x) + 0.25 * (mirror(up) + mirror(down)), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="tta_logits: level must be 0"):
        aug.tta_logits(predict, x, 3)


def test_bad_input():
    with pytest.raises(ValueError, match=r"reflect_pad: pad 5 must be smaller than the image size \(5, 7\)"):
        aug.reflect_pad(_images(), 5)
    with pytest.raises(ValueError, match=r"translate: shifts must be \(N, 2\) = \(6, 2\) integers in \[-2, 2\]"):
        aug.translate(aug.reflect_pad(_images(), 2), np.zeros((5, 2), int), 2)
    with pytest.raises(ValueError, match="translate: shifts must be"):
        aug.translate(aug.reflect_pad(_images(), 2), np.full((6, 2), 3), 2)


def test_fast_batches_walk_the_epochs_and_resume():
    x, y = _images(n=10, h=6, w=6), np.arange(10)
    batches = aug.FastBatches(x, y, 4, seed=2)
    seen = [batches.next_batch() for _ in range(5)]          # 2 batches per epoch: epochs 0, 1, 2
    assert batches.state_dict() == {"epoch": 2, "batch": 1}
    for k, (images, labels) in enumerate(seen):
        epoch, b = divmod(k, 2)
        rows = aug.epoch_batches(10, 4, epoch, seed=2)[b]
        np.testing.assert_array_equal(labels, rows)
        np.testing.assert_array_equal(images, aug.normalize(aug.epoch_images(x, epoch, seed=2)[rows]))
    resumed = aug.FastBatches(x, y, 4, seed=2, state={"epoch": 1, "batch": 1})
    for images, labels in seen[3:]:
        again = resumed.next_batch()
        np.testing.assert_array_equal(again[0], images)
        np.testing.assert_array_equal(again[1], labels)
    with pytest.raises(ValueError, match=r"FastBatches: batch_size must be in \[1, 10\]"):
        aug.FastBatches(x, y, 11)

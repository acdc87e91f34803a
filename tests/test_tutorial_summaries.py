"""The tutorial's summaries (cifar10.py, cifar10_train.py, cifar10_eval.py) as TensorBoard reads
them back: tensorboard's EventAccumulator over the event files of short real runs, checked
against train.csv, closed forms and arrays computed here."""
import csv
import io
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tinybn.eval import main as eval_main
from tinybn.models import cifar10 as cifar_models
from tinybn.summary import SummaryWriter, image_uint8
from tinybn.tensor import Tensor
from tinybn.train_summaries import activation_summaries
from tinybn.training import NullLog

from test_cli_cifar import train, write_cifar  # noqa: E402  (tests/ is on sys.path)

EVERYTHING = {"scalars": 0, "histograms": 0, "images": 0}    # keep every event (no sampling)
LOSS_TERMS = ["total_loss", "cross_entropy", "local3/weight_loss", "local4/weight_loss"]
LAYERS = ["conv1", "conv2", "local3", "local4", "softmax_linear"]
STEPS = 8


def read_back(folder):
    acc = EventAccumulator(str(folder), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """STEPS steps of the tutorial on random images, every step in train.csv and the event file."""
    root = tmp_path_factory.mktemp("tutorial")
    data = write_cifar(root / "data")
    train(data, root / "run", "--max-steps", str(STEPS), "--log-every", "1", "--summary-every", "1",
          "--backend", "numpy")
    with open(root / "run" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return root, read_back(root / "run"), rows


def test_the_tutorial_tags_are_written(run):
    _, acc, _ = run
    tags = acc.Tags()
    want_scalars = ({f"{t}__raw_" for t in LOSS_TERMS} | set(LOSS_TERMS) | {f"{layer}/sparsity" for layer in LAYERS}
                    | {"learning_rate", "examples/sec", "global_step/sec"})
    assert set(tags["scalars"]) == want_scalars
    weights = {f"{layer}/{leaf}" for layer in LAYERS for leaf in ("weights", "biases")}
    assert set(tags["histograms"]) == ({f"{layer}/activations" for layer in LAYERS} | weights
                                       | {f"{w}/gradients" for w in weights})
    assert tags["images"] == ["images/image/0", "images/image/1", "images/image/2"]
    assert [s for s, _ in scalars(acc, "learning_rate")] == list(range(1, STEPS + 1))
    assert all(v == pytest.approx(0.1) for _, v in scalars(acc, "learning_rate"))


def test_raw_loss_is_train_csv_and_the_averages_are_the_0_9_recursion(run):
    _, acc, rows = run
    csv_loss = [float(r["loss"]) for r in rows]
    assert scalars(acc, "total_loss__raw_") == [(s, np.float32(v)) for s, v in enumerate(csv_loss, 1)]
    for term in LOSS_TERMS:
        raw = np.array([v for _, v in scalars(acc, f"{term}__raw_")], dtype=np.float64)
        # closed form of avg_s = 0.9 avg_{s-1} + 0.1 raw_s, avg_0 = 0 (TF's shadow of a tensor)
        closed = [0.1 * sum(0.9 ** (s - k) * raw[k - 1] for k in range(1, s + 1)) for s in range(1, STEPS + 1)]
        got = [v for _, v in scalars(acc, term)]
        np.testing.assert_allclose(got, closed, rtol=2e-6, err_msg=term)
    xent = np.array([v for _, v in scalars(acc, "cross_entropy__raw_")])
    decay = sum(np.array([v for _, v in scalars(acc, f"{t}__raw_")]) for t in LOSS_TERMS[2:])
    np.testing.assert_allclose(xent + decay, csv_loss, rtol=1e-5)      # the terms add up to the loss
    assert np.all(decay > 0) and np.all(xent > 0)


def test_images_are_the_distorted_batch_scaled_as_tf(run):
    _, acc, _ = run
    from PIL import Image
    images = acc.Images("images/image/0")
    assert [e.step for e in images] == list(range(1, STEPS + 1))
    assert {(e.width, e.height) for e in images} == {(24, 24)}
    pixels = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)))
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
    # a standardized image has negative values: 0 maps to 128 and the largest |v| to 1 or 255
    assert pixels.min() == 1 or pixels.max() == 255


@pytest.mark.parametrize("image, want", [
    (np.array([[[0.0], [0.5], [2.0]]]), [[[0], [63], [255]]]),              # >= 0: v * 255 / max, truncated
    (np.array([[[-2.0], [0.0], [1.0]]]), [[[1], [128], [191]]]),            # v * 127 / max|v| + 128
    (np.zeros((1, 2, 3)), np.zeros((1, 2, 3))),                            # all zero stays black
    (np.array([[[7]]], dtype=np.uint8), [[[7]]]),                          # uint8 as it is
])
def test_image_scaling_closed_form(image, want):
    np.testing.assert_array_equal(image_uint8(image), np.asarray(want, dtype=np.uint8))


def test_images_bad_input_is_one_line(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match=r"images: expected a batch \(N, H, W, C\) with C in 1, 3, 4, got shape \(24, 24, 3\)"):
            w.images("images", np.zeros((24, 24, 3)), 1)
        with pytest.raises(ValueError, match="images: non-finite values"):
            w.images("images", np.full((1, 2, 2, 3), np.nan), 1)
        w.images("gray", np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1), 3, max_outputs=1)
    acc = read_back(tmp_path)
    assert acc.Tags()["images"] == ["gray/image"]                         # one image: TF's lone tag
    assert (acc.Images("gray/image")[0].width, acc.Images("gray/image")[0].height) == (2, 2)


def test_sparsity_and_activations_of_a_known_forward():
    """activation_summaries on a recorded forward: conv1 is the relu's output, its sparsity the
    fraction of exact zeros, as tf.nn.zero_fraction."""
    model = cifar_models.tutorial(rng=np.random.default_rng(0))
    model.record_activations = True
    images = np.random.default_rng(1).normal(size=(4, 24, 24, 3)).astype(np.float32)
    logits = model(Tensor(images))
    outputs = activation_summaries(model)
    assert list(outputs) == LAYERS
    assert outputs["conv1"] is model.activations["relu1"] and outputs["softmax_linear"] is logits
    conv1 = outputs["conv1"].numpy()
    assert conv1.shape == (4, 24, 24, 64) and 0.2 < np.mean(conv1 == 0) < 0.8    # some of each
    model.record_activations = False
    model.activations = {}
    model(Tensor(images))
    assert activation_summaries(model) == {}


def test_sparsity_summary_equals_the_fraction_of_zeros(run):
    """sparsity read back equals the zeros the histogram of the same tensor counts: a relu's
    output is >= 0, and TF's bucket [0, 1e-12) holds its zeros (no float32 relu output of
    these runs lies in (0, 1e-12))."""
    _, acc, _ = run
    for layer in ["conv1", "local4"]:
        for (step, sparsity), h in zip(scalars(acc, f"{layer}/sparsity"), acc.Histograms(f"{layer}/activations")):
            hv = h.histogram_value
            limits = list(hv.bucket_limit)
            zeros = hv.bucket[limits.index(1e-12)] if 1e-12 in limits else 0.0
            assert hv.min == 0 and h.step == step and 0 < sparsity < 1
            assert sparsity == pytest.approx(zeros / hv.num, abs=1e-7)


def test_eval_writes_precision_at_1_in_its_own_dir(run):
    root, _, _ = run
    ev = root / "eval"
    eval_main(["cifar", "--data-dir", str(root / "data"), "--train-dir", str(root / "run"), "--eval-dir", str(ev),
               "--no-download", "--batch-size", "8"])
    with open(ev / "eval.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert scalars(read_back(ev), "Precision @ 1") == [(STEPS, np.float32(float(row["precision_at_1"])))]
    assert "Precision @ 1" not in read_back(root / "run").Tags()["scalars"]   # train and eval: two runs


def test_resume_purges_the_repeated_steps_in_tensorboard(tmp_path):
    """kill -9 after step 6 with the checkpoint at 4: the resumed run's events for 5..8 replace
    the crashed run's 5..6 in TensorBoard's view, for every tag (each step once, the new values)."""
    data = write_cifar(tmp_path / "data")
    out = tmp_path / "run"
    train(data, out, "--max-steps", "6", "--checkpoint-every", "4", "--log-every", "1", "--summary-every", "1",
          "--backend", "numpy")
    crashed = read_back(out)
    os.unlink(out / "model.ckpt-6.npz")
    train(data, out, "--max-steps", "8", "--checkpoint-every", "4", "--log-every", "1", "--summary-every", "1",
          "--backend", "numpy")
    acc = read_back(out)
    with open(out / "train.csv", newline="") as f:
        csv_loss = [float(r["loss"]) for r in csv.DictReader(f)]
    assert scalars(acc, "total_loss__raw_") == [(s, np.float32(v)) for s, v in enumerate(csv_loss, 1)]
    assert [e.step for e in acc.Histograms("conv1/weights")] == list(range(1, 9))
    assert [e.step for e in acc.Images("images/image/0")] == list(range(1, 9))
    assert scalars(acc, "total_loss__raw_")[:4] == scalars(crashed, "total_loss__raw_")[:4]


def test_null_log_takes_every_writer_method():
    """A rank other than 0 writes to NullLog: every method the trainer calls on a writer exists."""
    used = ["scalar", "scalars", "histogram", "images", "flush", "close"]
    assert all(hasattr(SummaryWriter, m) for m in used)
    log = NullLog()
    for m in used:
        getattr(log, m)("tag", np.zeros((1, 2, 2, 3)), 1)

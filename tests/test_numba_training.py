"""A 200-step training run on the numba backend follows the numpy reference's loss curve.

The model is the CIFAR tutorial's layers at a reduced width so that the two runs
fit in well under a minute: conv 5x5 -> BatchNorm -> relu -> max pool 3x3/2 SAME
-> LRN -> conv 5x5 -> BatchNorm -> relu -> LRN -> avg pool 3x3/2 SAME -> dense,
mean sparse softmax cross-entropy, plain gradient descent. Every numba kernel is
on the path (im2col, col2im of the second conv, both pools, BN train and
inference, LRN, softmax cross-entropy). (The full tutorial model at batch 8 takes
about 50 s per 200 steps on the numpy backend alone.) Data: 10 fixed random
24x24x3 class patterns plus noise, batch 8, so the loss has something to learn.

Criterion: the relative loss difference at step s must stay below
    1e-5 * 10^(s/50)   (1e-5 at the start, 1e-3 at step 100, capped at 0.1)
Training in float32 is chaotic: any rounding difference grows, and a flipped
relu or max-pool argmax changes a gradient by a whole term. Measured with this
set-up (worst relative difference over steps 0-10 / 10-50 / 50-100 / 100-150 /
150-200): numba vs numpy 1.1e-7 / 4.0e-7 / 4.5e-7 / 5.8e-6 / 4.4e-3; numpy vs numpy
with every initial weight moved by one ulp 2.8e-7 / 4.2e-7 / 1.2e-6 / 2.3e-4 /
1.9e-2. So the kernels' differences are the size of float32 noise; the measured
difference stays below 1/100 of the bound up to step 150 and 1/15 after. A kernel that is wrong (not merely
rounded differently) shows up in the first steps, which the bound holds to 1e-5.
"""
import numpy as np

import tinybn.backend as backend
from tinybn import Tensor, no_grad
from tinybn.models.cifar10 import CifarModel
from tinybn.nn import init
from tinybn.nn.batchnorm import BatchNorm
from tinybn.nn.layers import LRN, AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from tinybn.optim import GradientDescent

STEPS, BATCH, WIDTH, LEARNING_RATE = 200, 8, 16, 0.05


def small_tutorial(seed):
    rng = np.random.default_rng(seed)

    def conv(cin):
        return Conv2D(cin, WIDTH, 5, padding="SAME", use_bias=False,
                      kernel_initializer=init.truncated_normal(5e-2), rng=rng)

    return CifarModel([
        ("conv1", conv(3)), ("bn1", BatchNorm(WIDTH)), ("relu1", ReLU()), ("pool1", MaxPool2D(3, 2, "SAME")),
        ("norm1", LRN(4, 1.0, 0.001 / 9.0, 0.75)),
        ("conv2", conv(WIDTH)), ("bn2", BatchNorm(WIDTH)), ("relu2", ReLU()), ("norm2", LRN(4, 1.0, 0.001 / 9.0, 0.75)),
        ("pool2", AvgPool2D(3, 2, "SAME")), ("flatten", Flatten()),
        ("logits", Dense(6 * 6 * WIDTH, 10, kernel_initializer=init.truncated_normal(0.04), rng=rng)),
    ])


def batches(seed=0):
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((10, 24, 24, 3)).astype(np.float32)
    labels = rng.integers(0, 10, (STEPS, BATCH))
    images = (patterns[labels] + 1.5 * rng.standard_normal((STEPS, BATCH, 24, 24, 3))).astype(np.float32)
    return images, labels


def train(backend_name):
    """Per-step losses and the trained model's inference-mode logits on the last batch."""
    model = small_tutorial(seed=1)
    optimizer = GradientDescent(model.parameters(), LEARNING_RATE)
    images, labels = batches()
    losses = []
    with backend.backend(backend_name):
        for step in range(STEPS):
            loss = model.loss(model(Tensor(images[step])), labels[step])
            model.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
        model.eval()
        with no_grad():
            logits = model(Tensor(images[-1])).numpy()
    return np.array(losses), logits


def test_numba_training_follows_the_reference_loss_curve():
    reference, reference_logits = train("numpy")
    ours, logits = train("numba")
    assert np.all(np.isfinite(ours))
    # it learned: otherwise following the curve would prove little
    assert reference[-20:].mean() < 0.3 * reference[:10].mean()
    steps = np.arange(STEPS)
    bound = np.minimum(0.1, 1e-5 * 10.0 ** (steps / 50))
    relative = np.abs(ours - reference) / np.abs(reference)
    worst = int(np.argmax(relative / bound))
    assert np.all(relative <= bound), (f"step {worst}: numba loss {ours[worst]!r}, numpy {reference[worst]!r}, "
                                       f"relative difference {relative[worst]:.2e} > {bound[worst]:.2e}")
    # the trained weights through BN inference: measured 1.7e-3 of the largest logit
    scale = float(np.max(np.abs(reference_logits)))
    np.testing.assert_allclose(logits, reference_logits, rtol=0, atol=0.02 * scale)

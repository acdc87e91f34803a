"""The whole fast recipe, step after step, against airbench94's training loop written in TF.

test_tf_fast_model.py checks one step of the network and test_tf_fast_recipe.py the optimizer
alone; this file checks that the pieces are put together as airbench94.py's main loop puts
them, over a full (tiny) run that goes through every phase:

    steps 1..total          the triangle schedule, lr(s) = base lr * interp(s; (0, 0.2),
                            (int(0.23 total), 1), (total, 0.07)), applied before step s + 1
    each step               the summed label-smoothed loss, its tf.GradientTape gradient, then
                            PyTorch's Nesterov SGD written out in TF ops, per group:
                                g' = g + wd p,  buf = m buf + g',  p -= lr (g' + m buf)
                            (buf starts as g'), the BN biases at 64x the lr and wd / lr_b
    epochs 0..2             the whitening bias trains; from epoch 3 it has no gradient, so
                            neither it nor its buffer moves
    epoch >= 3, s % 5 == 0  the first such step copies every float tensor (weights and BN
                            moving statistics) into a shadow; each later one sets
                            shadow += (1 - rho) (t - shadow), t = shadow, rho =
                            0.95**5 (s / total)**3
    each epoch's end        t = shadow once a shadow exists
    moving statistics       decay 0.6, the variance with Bessel's n / (n - 1), from tf.nn.moments

TF's side shares nothing with tinybn's but the initial weights and the batches (the input
pipeline has its own TF checks). The images are uniform noise: real images have flat regions
whose pooling windows hold exact ties, and there a difference of one ulp in a conv output
moves the max pool's gradient to another tap and the two runs apart; noise has no ties.
Float64 throughout: after 40 steps every weight and statistic agrees to
parity.TOLERANCES["recipe fast"].
"""
import math

import numpy as np
import pytest
import tensorflow as tf

import parity
from test_tf_fast_model import DECAY, WIDTHS, tf_fast
from tinybn.data.fast_augment import FastBatches, normalize
from tinybn.models.cifar_fast import HYPERPARAMETERS, fast
from tinybn.tasks.fast_recipe import FastRecipe

NUM_IMAGES, BATCH, EPOCHS = 64, 16, 9.9            # 4 steps an epoch, 40 steps: every phase above
MOMENTUM = 0.85


def airbench_groups(batch_size):
    """(lr, weight decay) of the BN biases and of the rest, from airbench94.py's decoupled hyp."""
    hyp = HYPERPARAMETERS
    kilostep_scale = 1024 * (1 + 1 / (1 - hyp["momentum"]))
    lr = hyp["lr"] / kilostep_scale
    wd = hyp["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * hyp["bias_scaler"]
    return (lr_biases, wd / lr_biases), (lr, wd / lr)


def triangle(total):
    return np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])


def tf_airbench_run(params, buffers, batches, total, steps_per_epoch):
    """airbench94's loop on TF variables; returns (final tensors by name, summed loss per step)."""
    weights = {n: tf.Variable(a.copy()) for n, a in params.items()}
    consts = dict(buffers)                               # BN moving statistics, the whitening kernel
    momentum_buffers = {}
    (lr_b, wd_b), (lr, wd) = airbench_groups(BATCH)
    schedule = triangle(total)
    shadow, losses = None, []
    averaged = [n for n in list(weights) + list(consts) if n != "net/whiten/kernel"]   # every float tensor

    def value(n):
        return weights[n].numpy() if n in weights else consts[n]

    def set_value(n, v):
        if n in weights:
            weights[n].assign(v)
        else:
            consts[n] = v.copy()
    for step in range(1, total + 1):
        epoch = (step - 1) // steps_per_epoch
        x, labels = batches[step - 1]
        trained = [n for n in weights if n != "net/whiten/bias" or epoch < HYPERPARAMETERS["whiten_bias_epochs"]]
        statistics = []
        with tf.GradientTape() as tape:
            inputs = dict(weights, **{n: tf.constant(v) for n, v in consts.items()})
            _, loss = tf_fast(inputs, tf.constant(x), tf.constant(labels), statistics)
        grads = tape.gradient(loss, [weights[n] for n in trained])
        losses.append(float(loss.numpy()))
        for name, g in zip(trained, grads):
            group_lr, group_wd = (lr_b, wd_b) if name.endswith("/beta") else (lr, wd)
            g = g + group_wd * weights[name]
            buf = momentum_buffers[name] = MOMENTUM * momentum_buffers[name] + g if name in momentum_buffers else g
            weights[name].assign_sub(group_lr * schedule[step - 1] * (g + MOMENTUM * buf))
        for prefix, mean, var, n in statistics:
            consts[prefix + "/moving_mean"] = DECAY * consts[prefix + "/moving_mean"] + (1 - DECAY) * mean.numpy()
            consts[prefix + "/moving_variance"] = (DECAY * consts[prefix + "/moving_variance"]
                                                   + (1 - DECAY) * var.numpy() * n / (n - 1))
        if epoch >= 3 and step % 5 == 0:
            if shadow is None:
                shadow = {n: value(n).copy() for n in averaged}
            else:
                rho = 0.95 ** 5 * (step / total) ** 3
                for n in averaged:
                    shadow[n] = shadow[n] + (1 - rho) * (value(n) - shadow[n])
                    set_value(n, shadow[n])
        if shadow is not None and (step % steps_per_epoch == 0 or step == total):
            for n in averaged:
                set_value(n, shadow[n])
    final = {n: w.numpy() for n, w in weights.items()}
    final.update(consts)
    return final, losses


@pytest.mark.parametrize("seed", [0, 1])
def test_whole_run_equals_airbench_loop_in_tf_float64(seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (NUM_IMAGES, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, NUM_IMAGES).astype(np.int32)
    model = fast(rng=np.random.default_rng(seed), dtype=np.float64, widths=WIDTHS,
                 whitening_images=normalize(images).astype(np.float64))
    params = {n: p.data.copy() for n, p in model.named_parameters()}
    buffers = {n: b.data.copy() for n, b in model.named_buffers()}
    recipe = FastRecipe(model, NUM_IMAGES, BATCH, EPOCHS)
    total = recipe.total_steps
    assert (recipe.steps_per_epoch, total) == (4, math.ceil(4 * EPOCHS)) == (4, 40)

    queue = FastBatches(images, labels, BATCH, seed=seed)
    batches = [queue.next_batch() for _ in range(total)]
    batches = [(x.astype(np.float64), y) for x, y in batches]
    ours_losses = [recipe.train_step(x, y)[0] * BATCH for x, y in batches]
    theirs, tf_losses = tf_airbench_run(params, buffers, batches, total, recipe.steps_per_epoch)

    assert recipe.lookahead is not None
    parity.assert_parity("recipe fast", "loss", np.array(ours_losses), np.array(tf_losses), "per-step loss")
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    assert set(state) == set(theirs)
    for name, t in state.items():
        parity.assert_parity("recipe fast", "after 40 steps", t.data, theirs[name], name)
    # the bias froze after epoch 2 and the weights moved well away from their start: a run that
    # skipped the freeze, the average or the schedule would not pass the comparison above
    moved = np.abs(state["net/block2/conv1/kernel"].data - params["net/block2/conv1/kernel"]).max()
    assert moved > 1e-3

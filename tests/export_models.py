"""Models for the export tests (test_export_*.py): weights that look trained, and tinybn's logits.

Batch norm's initial moving statistics (mean 0, variance 1) make it nearly the identity,
which would let a wrong fold or a missing BN node pass. calibrated() sets each BN's moving
statistics to those of a real batch (one training-mode pass at decay 0) and draws gamma and
beta away from 1 and 0, so that inference-mode BN changes every activation.
"""
import numpy as np

from tinybn import Tensor, checkpoint, no_grad
from tinybn.checkpoint_manager import CheckpointManager
from tinybn.models import cifar10, mnist, resnet_v2
from tinybn.nn.batchnorm import BatchNorm

CIFAR, MNIST, RESNET = (24, 24, 3), (28, 28, 1), (64, 64, 3)
BUILDERS = {"tutorial": (cifar10.tutorial, CIFAR), "tutorial_bn": (cifar10.tutorial_bn, CIFAR),
            "bn": (cifar10.bn, CIFAR), "cnn_bn": (mnist.cnn_bn, MNIST),
            "resnet_v2_50": (lambda rng: resnet_v2.resnet_v2_50(10, rng=rng), RESNET)}


def logits(model, images):
    """tinybn's logits of `images` in inference mode."""
    model.eval()
    with no_grad():
        out = model(Tensor(np.asarray(images, np.float32)))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def calibrated(name, seed=0):
    """(model, input shape): the model `name` of BUILDERS with trained-looking batch norm."""
    build, shape = BUILDERS[name]
    rng = np.random.default_rng(seed)
    model = build(rng=np.random.default_rng(seed + 1))
    bns = [m for _, m in model.named_modules() if isinstance(m, BatchNorm)]
    if bns:
        decays = [bn.decay for bn in bns]
        for bn in bns:
            bn.decay = 0.0
        model.train()
        model(Tensor(images(shape, 4, rng)))
        for bn, decay in zip(bns, decays):
            bn.decay = decay
        state = model.state_dict()
        for key, value in state.items():
            if key.endswith("/gamma"):
                state[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
            elif key.endswith("/beta"):
                state[key] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
        model.load_state_dict(state)
    return model.eval(), shape


def images(shape, n=2, rng=None):
    rng = rng if rng is not None else np.random.default_rng(7)
    return rng.uniform(0.0, 1.0, (n,) + tuple(shape)).astype(np.float32) if shape == MNIST else \
        rng.normal(0.0, 1.0, (n,) + tuple(shape)).astype(np.float32)


def shadows(model, seed=3):
    """{name/ExponentialMovingAverage: array} that differ from the weights, as after training."""
    rng = np.random.default_rng(seed)
    return {f"{name}/ExponentialMovingAverage": (p.numpy() * rng.uniform(0.8, 1.2, p.shape)).astype(np.float32)
            for name, p in model.named_parameters()}


def write_run(train_dir, model, task, name, step=42, ema=None):
    """A tinybn training checkpoint of `model` (and shadows `ema`) in `train_dir`; its path."""
    state = {"model": model.state_dict()}
    if ema is not None:
        state["ema"] = ema
    meta = {"task": task, "model": name, "batch_size": 8, "seed": 0}
    if task == "mnist":
        meta.update(bn_decay=mnist.BN_DECAY, eval_split="test", train_split="train")
    return CheckpointManager(train_dir).save(step, checkpoint.flatten(state), meta)


def max_scaled_diff(ours, theirs):
    """max |ours - theirs| over max(1, max |theirs|): float32 rounding grows with the logits' size."""
    return float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))

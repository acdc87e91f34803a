"""The fast CIFAR recipe's training step and evaluation: airbench94.py's main loop on tinybn's
pieces (models/cifar_fast.py, optim.SGD and Triangle, lookahead.py, data/fast_augment.py).

    recipe = FastRecipe(model, num_examples, batch_size, epochs)
    recipe.train_step(images, labels)  -> (loss per example, accuracy)   one step, all of it
    evaluate(model, images, labels, tta_level=2)  -> precision@1          uint8 images in

airbench's hyperparameters are in its "decoupled" form (per 1024 examples, independent of the
momentum); PyTorch's SGD takes them as (airbench94.py, main):
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = hyp lr / kilostep_scale,  wd = hyp weight_decay * batch_size / kilostep_scale
    BN biases:  lr_b = lr * bias_scaler, weight_decay wd / lr_b;  the rest: lr, weight_decay wd / lr
    lr_lambda = Triangle(total_steps, start 0.2, end 0.07, peak 0.23),
    total_steps = ceil(steps_per_epoch * epochs), steps_per_epoch = num_examples // batch_size
After each step s (counted from 1) of epoch e (from 0), as airbench's loop:
    e >= ema start_epochs and s % every_n_steps == 0: the first such step starts a
        LookaheadAverage of the model, each later one updates it with airbench_decay(s, total)
    the last step of an epoch (or of the run), once an average exists: update(model, 1.0)
    e >= whiten_bias_epochs: the whitening bias stops requiring a gradient (airbench's
        requires_grad = False), so SGD leaves it (and its momentum) as they are, and the
        backward stops at block1's first conv.
`without` (models/cifar_fast.py ABLATIONS) takes out bn-bias-lr (bias_scaler 1), nesterov
(plain momentum) and lookahead (no average); the model's and the input's are theirs.

Tasks floor: imports training-floor pieces, data, models, optim, backend and core.
"""
import math

import numpy as np

from .. import optim
from ..backend import to_numpy
from ..data.fast_augment import normalize, tta_logits
from ..lookahead import LookaheadAverage, airbench_decay
from ..models.cifar_fast import HYPERPARAMETERS, check_ablations
from ..tensor import Tensor, no_grad


def sgd_settings(batch_size, hyp=HYPERPARAMETERS):
    """(lr, weight_decay, lr_biases, weight_decay_biases) of PyTorch's SGD from airbench's hyp."""
    kilostep_scale = 1024 * (1 + 1 / (1 - hyp["momentum"]))
    lr = hyp["lr"] / kilostep_scale
    wd = hyp["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * hyp["bias_scaler"]
    return lr, wd / lr, lr_biases, wd / lr_biases


class FastRecipe:
    """The model's optimizer, schedule, Lookahead average and whitening-bias freeze, step by step."""

    def __init__(self, model, num_examples, batch_size, epochs, hyp=None, without=()):
        self.hyp = dict(HYPERPARAMETERS, **(hyp or {}))
        self.without = check_ablations(without)
        if "bn-bias-lr" in self.without:
            self.hyp["bias_scaler"] = 1.0
        self.model, self.batch_size = model, batch_size
        self.steps_per_epoch = num_examples // batch_size
        if self.steps_per_epoch < 1 or epochs <= 0:
            raise ValueError(f"FastRecipe: {num_examples} examples at batch size {batch_size} for {epochs} "
                             f"epochs make no full step")
        self.total_steps = math.ceil(self.steps_per_epoch * epochs)
        lr, wd, lr_b, wd_b = sgd_settings(batch_size, self.hyp)
        groups = model.parameter_groups()
        self.optimizer = optim.SGD([{"params": groups["norm_biases"], "lr": lr_b, "weight_decay": wd_b},
                                    {"params": groups["other"], "lr": lr, "weight_decay": wd}],
                                   lr=lr, momentum=self.hyp["momentum"], nesterov="nesterov" not in self.without,
                                   lr_lambda=optim.Triangle(self.total_steps, 0.2, 0.07, 0.23))
        self.lookahead = None

    @property
    def step(self):
        return self.optimizer.iterations

    def train_step(self, images, labels):
        """One airbench step on a normalised batch: (summed loss / batch size, accuracy)."""
        epoch = self.step // self.steps_per_epoch
        # airbench's requires_grad = False: no gradient, so SGD leaves the bias and its momentum,
        # and the frozen whitening layer below it records no graph (block1's first conv then
        # computes no input gradient: about a sixth of that block's backward)
        self.model.whitening.bias.requires_grad = epoch < self.hyp["whiten_bias_epochs"]
        logits = self.model(Tensor(images))
        loss = self.model.loss(logits, labels)
        self.model.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._average(epoch)
        accuracy = float(np.mean(np.argmax(logits.numpy(), axis=1) == to_numpy(labels)))
        return float(loss.item()) / len(labels), accuracy

    def _average(self, epoch):
        ema, step = self.hyp["ema"], self.step
        if "lookahead" in self.without:
            return
        if epoch >= ema["start_epochs"] and step % ema["every_n_steps"] == 0:
            if self.lookahead is None:
                self.lookahead = LookaheadAverage(self.model)
            else:
                self.lookahead.update(self.model, airbench_decay(step, self.total_steps, ema["decay_base"],
                                                                 ema["every_n_steps"], ema["decay_pow"]))
        if self.lookahead is not None and (step % self.steps_per_epoch == 0 or step == self.total_steps):
            self.lookahead.update(self.model, 1.0)

    def state_dict(self):
        """The optimizer's state and, once started, the average's shadows."""
        state = {"optimizer": self.optimizer.state_dict()}
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.lookahead = None
        if "lookahead" in state:
            self.lookahead = LookaheadAverage(self.model).load_state_dict(state["lookahead"])
        return self


def evaluate(model, images, labels, tta_level=None, batch_size=500):
    """precision@1 of `model` (inference mode) on uint8 images, with airbench's test-time augmentation."""
    level = HYPERPARAMETERS["tta_level"] if tta_level is None else tta_level
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            def predict(x):
                return model(Tensor(np.ascontiguousarray(x))).numpy()
            hits = 0
            for start in range(0, len(images), batch_size):
                x = normalize(images[start:start + batch_size])
                logits = tta_logits(predict, x, level)
                hits += int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels[start:start + batch_size])))
    finally:
        model.train(was_training)
    return hits / len(images)

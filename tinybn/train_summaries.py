"""TutorialSummaries: what TF's cifar10.py and cifar10_train.py write to TensorBoard, for a run.

    summaries = TutorialSummaries(model, named_params, global_batch_size)
    summaries.before_step(step, images, due)     remembers the distorted images, asks the model to
                                                 record its activations on a summary step
    summaries.after_loss(logits, labels, loss)   each loss term and its 0.9 moving average
    summaries.write(writer, step, lr)            at --summary-every (below)
    summaries.state_dict() / load_state_dict()   the moving averages, kept in checkpoints

Tags are TF's (summary_tag): each loss term raw ("cross_entropy__raw_": TF's summary ops turn
the " (raw)" of _add_loss_summaries' name into "__raw_") and averaged ("cross_entropy"),
learning_rate, examples/sec and global_step/sec since the last summary, each layer's
activations and sparsity (_activation_summary: the fraction of zeros), every weight and its
gradient (conv1/weights, conv1/weights/gradients), BN's moving statistics, and the first
IMAGE_SUMMARIES distorted training images (tf.summary.image('images', ...); skipped without
Pillow). The loss averages run every step, as the tutorial's loss_averages_op runs with each
train_op, starting at 0 as TF's shadow of a tensor does; a checkpoint keeps them, as TF's
does, so a resumed run continues the same curves. In a data-parallel job only rank 0 keeps
them (its tower, as the multi-GPU tutorial summarizes one tower).

Floor: training (tests/test_layering.py); imports backend, core, nn, ops, models' export
names and summary.
"""
import time

import numpy as np

from . import backend
from . import summary as summary_lib
from .models.export import tf_name
from .nn.batchnorm import BatchNorm
from .nn.layers import ReLU
from .ops.basic import reduce_mean
from .ops.losses import l2_loss, sparse_softmax_cross_entropy_with_logits
from .tensor import Tensor

LOSS_AVERAGE_DECAY = 0.9      # _add_loss_summaries: ExponentialMovingAverage(0.9) of each loss term
IMAGE_SUMMARIES = 3           # tf.summary.image's max_outputs for the distorted training images


def summary_tag(name):
    """The TF variable name of a state_dict name ("net/conv1/kernel" -> "conv1/weights"), the
    name itself for a model outside the tutorial's naming."""
    try:
        return tf_name(name)
    except ValueError:
        return name


def activation_summaries(model):
    """{layer: output} for the layers with a kernel of a model that recorded its activations,
    each output taken after the BatchNorm and ReLU that follow the layer: TF's "conv1" is
    the relu's output (empty when nothing was recorded)."""
    outputs, current = {}, None
    layers = dict(model.net.named_children()) if hasattr(model, "net") else {}
    for name, x in getattr(model, "activations", {}).items():
        layer = layers[name]
        if "kernel" in layer._parameters:
            current = name
        elif not isinstance(layer, (BatchNorm, ReLU)):
            current = None
        if current is not None:
            outputs[current] = x
    return outputs


class TutorialSummaries:
    """The loss terms and their moving averages, the step's images and the summary clock."""

    def __init__(self, model, named_params, global_batch_size):
        self.model, self.named, self.global_batch_size = model, list(named_params), global_batch_size
        self.loss_terms, self.loss_averages = {}, {}
        self.images, self.clock = None, None

    def before_step(self, step, images, due):
        if due:
            self.images = np.array(backend.to_numpy(images[:IMAGE_SUMMARIES]))
        if self.clock is None:
            self.clock = (time.time(), step)
        if hasattr(self.model, "record_activations"):
            self.model.record_activations = due

    def after_loss(self, logits, labels, loss):
        """total_loss, cross_entropy and each <layer>/weight_loss (wd * l2_loss of its weights) of
        this step, before the update, and their moving averages."""
        terms = {"total_loss": float(loss.item())}
        decay = getattr(self.model, "weight_decay", None)
        if decay is not None:
            no_grad = Tensor(logits.data)
            terms["cross_entropy"] = float(reduce_mean(sparse_softmax_cross_entropy_with_logits(labels, no_grad)).item())
            names = {id(p): name for name, p in self.named}
            for param, wd in decay:
                terms[f"{summary_tag(names[id(param)]).rpartition('/')[0]}/weight_loss"] = float(
                    (l2_loss(Tensor(param.data)) * wd).item())
        for name, value in terms.items():
            self.loss_averages[name] = (LOSS_AVERAGE_DECAY * self.loss_averages.get(name, 0.0)
                                        + (1 - LOSS_AVERAGE_DECAY) * value)
        self.loss_terms = terms

    def write(self, writer, step, lr):
        """Everything of the module docstring, at `step`."""
        scalars = {}
        for name, value in self.loss_terms.items():
            scalars[f"{name}__raw_"] = value
            scalars[name] = self.loss_averages[name]
        scalars["learning_rate"] = lr
        now, (then, then_step) = time.time(), self.clock
        if step > then_step and now > then:
            scalars["global_step/sec"] = (step - then_step) / (now - then)
            scalars["examples/sec"] = scalars["global_step/sec"] * self.global_batch_size
        self.clock = (now, step)
        for layer, x in activation_summaries(self.model).items():
            values = backend.to_numpy(x.data)
            writer.histogram(f"{layer}/activations", values, step)
            scalars[f"{layer}/sparsity"] = float(np.mean(values == 0))
        writer.scalars(scalars, step)
        for name, p in self.named:
            writer.histogram(summary_tag(name), p.numpy(), step)
            if p.grad is not None:
                writer.histogram(f"{summary_tag(name)}/gradients", backend.to_numpy(p.grad), step)
        for name, b in self.model.named_buffers():       # BN's moving statistics: what inference uses
            writer.histogram(summary_tag(name), b.numpy(), step)
        if self.images is not None and summary_lib.HAVE_PILLOW:
            writer.images("images", self.images, step, max_outputs=IMAGE_SUMMARIES)
        self.images = None
        if hasattr(self.model, "activations"):
            self.model.activations = {}      # the step's tensors go with the graph they belong to

    def state_dict(self):
        """{term: float64 scalar array} of the loss moving averages."""
        return {name: np.float64(value) for name, value in self.loss_averages.items()}

    def load_state_dict(self, state):
        """The averages of a checkpoint; one written before they were kept restarts them at 0."""
        self.loss_averages = {name: float(np.asarray(value)) for name, value in state.items()}

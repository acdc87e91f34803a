"""The base of the image classifiers in tinybn.models: named layers in a Sequential, and a loss
of mean sparse softmax cross-entropy plus weight decay.

    SequentialClassifier(layers, weight_decay)   layers: (name, Module) pairs;
                                                 weight_decay: (parameter, coefficient) pairs
    loss = mean(sparse_softmax_cross_entropy_with_logits(labels, logits))
           + sum of coefficient * l2_loss(parameter)        (l2_loss(w) = sum(w**2) / 2)

as TF's tutorials build their total_loss from the 'losses' collection.

With `record_activations` set, forward also keeps each layer's output in `activations`
({layer name: Tensor}, replaced at each forward): what the trainer's activation summaries
(histogram and sparsity, TF's _activation_summary) read at its summary steps.

Models floor: imports nn and ops.
"""
from ..nn.layers import Sequential
from ..nn.module import Module
from ..ops.basic import add, reduce_mean
from ..ops.losses import l2_loss, sparse_softmax_cross_entropy_with_logits


class SequentialClassifier(Module):
    """A Sequential of named layers plus the weight decay terms of the loss."""

    def __init__(self, layers, weight_decay=()):
        super().__init__()
        self.net = self.add_module("net", Sequential(*layers))
        self.weight_decay = list(weight_decay)      # (parameter, coefficient) pairs
        self.record_activations = False
        self.activations = {}

    def forward(self, images):
        if not self.record_activations:
            return self.net(images)
        self.activations = {}
        x = images
        for name, layer in self.net.named_children():
            x = self.activations[name] = layer(x)
        return x

    def regularization_loss(self):
        """sum of wd * l2_loss(w), as the tutorial adds to its 'losses' collection; None if no terms."""
        total = None
        for param, wd in self.weight_decay:
            term = l2_loss(param) * wd
            total = term if total is None else add(total, term)
        return total

    def loss(self, logits, labels):
        """mean cross-entropy + weight decay: the tutorial's total_loss."""
        xent = reduce_mean(sparse_softmax_cross_entropy_with_logits(labels, logits))
        reg = self.regularization_loss()
        return xent if reg is None else add(xent, reg)

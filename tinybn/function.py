"""Function: the base of every op, with forward and backward side by side.

An op subclasses Function and writes two methods on plain arrays:

    forward(*xs)   -> y or (y1, y2, ...)      inputs: the .data of each operand
    backward(*gys) -> gx or (gx1, gx2, ...)   one gradient per input (None if the
                                              input is not differentiable, e.g. labels)

Non-tensor arguments (strides, padding, epsilon ...) go to the constructor.
Whatever backward needs is kept with `self.save_for_backward(...)` and read
back from `self.saved`; after the graph is walked once those buffers are
freed, so a second backward through the same graph is a clear error unless
the first one asked for `retain_graph=True`.

Calling a Function on Tensors (or arrays) runs forward, wraps the results in
Tensors and, when gradients are being recorded and some input requires one,
links the outputs to this Function so `Tensor.backward` can walk back to it.
"""
from . import tensor as _t


class _Edge:
    """What backward needs of an intermediate input: which output of which Function it is."""
    __slots__ = ("creator", "output_index", "requires_grad", "shape")

    def __init__(self, t):
        self.creator, self.output_index, self.requires_grad, self.shape = t.creator, t.output_index, True, t.shape


class Function:
    def __call__(self, *inputs):
        tensors = [_t.as_tensor(x) for x in inputs]
        outputs = self.forward(*[t.data for t in tensors])
        single = not isinstance(outputs, tuple)
        if single:
            outputs = (outputs,)
        record = _t.grad_enabled() and any(t.requires_grad for t in tensors)
        results = [_t.Tensor(y, requires_grad=record) for y in outputs]
        if record:
            # a leaf is kept (its owner holds it anyway); of an intermediate only its place
            # in the graph, so its array is freed once nothing but this graph would hold it
            # (backward needs only what forward saved): ResNet-50's graph held 2.3x the memory
            self.inputs = [t if t.creator is None else _Edge(t) for t in tensors]
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for i, r in enumerate(results):
                r.creator, r.output_index = self, i
        else:
            self.saved = None
        return results[0] if single else tuple(results)

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError

    def release(self):
        """Free what forward saved; Tensor.backward refuses a released Function."""
        self.saved = None
        self.released = True

    released = False

    def __repr__(self):
        return f"<{type(self).__name__}>"

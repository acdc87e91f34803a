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
import weakref

from . import tensor as _t


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
            self.inputs = tensors
            self.output_refs = [weakref.ref(r) for r in results]
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for r in results:
                r.creator = self
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

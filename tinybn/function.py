"""Function: the base of every op, with forward and backward side by side.

Floor: core (with tensor.py, state.py, arrays.py), the lowest; imports only tensor.py and
arrays.py (which array library holds an array).

An op subclasses Function and writes two methods on plain arrays:

    forward(*xs)   -> y or (y1, y2, ...)      inputs: the .data of each operand
    backward(*gys) -> gx or (gx1, gx2, ...)   one gradient per input (None if the
                                              input is not differentiable, e.g. labels,
                                              or needs none: see needs_input_grad)

Non-tensor arguments (strides, padding, epsilon ...) go to the constructor.

Before forward runs, `self.needs_input_grad` holds one bool per input: gradients
are being recorded and that input requires one (PyTorch's ctx.needs_input_grad).
forward reads it to skip work only an unused gradient would need (max-pool's
argmax, the labels' gradient of a cross-entropy), backward to return None there.

Whatever backward needs is kept with `self.save_for_backward(...)` and read
back from `self.saved`; after the graph is walked once those buffers are
freed (`release()`), so a second backward through the same graph is a clear error
unless the first one asked for `retain_graph=True`. Nothing backward reads may live
outside `saved`, or release() would not free it. For each leaf (a parameter, an input)
whose array, or a view of it, was saved, the Function keeps the leaf's version
(Tensor.version): backward refuses the graph once an optimizer step or a load has
changed that leaf in place, since the saved array now holds the new value.

An output that no gradient reached gets zeros in backward, unless the op sets
`materialize_grads = False` (PyTorch's ctx.set_materialize_grads(False)): then it gets
None, and need not look at the values to find out (fused batch norm's statistics).

While a tinybn.profiler.OpProfiler is active (it sets `tinybn.tensor.profiler`), forward
and backward are called through it, which times them; otherwise that hook is one `is None`
test, and the results are the same arrays either way.

Calling a Function on Tensors (or arrays) checks that all inputs live on one device
(numpy or cupy arrays, not both: a TypeError naming the op and the inputs), runs
forward, wraps the results in Tensors and, when some input needs a gradient, links
the outputs to this Function so `Tensor.backward` can walk back to it.
"""
import inspect

from . import tensor as _t
from .arrays import array_module


class _Edge:
    """What backward needs of an intermediate input: which output of which Function it is."""
    __slots__ = ("creator", "output_index", "requires_grad", "shape")

    def __init__(self, t):
        self.creator, self.output_index, self.requires_grad, self.shape = t.creator, t.output_index, True, t.shape


def _owner(array):
    """The array that owns `array`'s memory (numpy and cupy views point to it by .base)."""
    base = getattr(array, "base", None)
    return array if base is None else base


def _holds(saved, array):
    """Whether `saved` (what forward kept) holds `array` or a view of its memory."""
    owner = _owner(array)
    return any(s is array or _owner(s) is owner for s in saved if hasattr(s, "shape"))


def _check_one_device(fn, tensors):
    """TypeError naming the op and its inputs when they live on different devices.

    numpy (host) and cupy (device) arrays cannot meet in one op: cupy refuses a host
    operand, numpy tries to convert a device one, either way with an error from deep
    inside the op that names neither. The op's name is its tf.nn name where it has one.
    """
    if len(tensors) < 2:
        return
    modules = [array_module(t.data) for t in tensors]
    if all(m is modules[0] for m in modules):
        return
    names = _input_names(fn, len(tensors))
    where = ", ".join(f"{n} {m.__name__} {t.shape}" for n, t, m in zip(names, tensors, modules))
    raise TypeError(f"{getattr(fn, 'op', None) or type(fn).__name__}: inputs on different devices ({where}); move them to one "
                    f"(tinybn.backend.device_array, Tensor.numpy()) before the op")


def _input_names(fn, count):
    """What fn.forward calls its inputs ("x", "w"; "xs[1]" for *xs), for error messages."""
    names, rest = [], None
    for p in list(inspect.signature(fn.forward).parameters.values()):
        if p.kind == p.VAR_POSITIONAL:
            rest = p.name
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    names += [f"{rest or 'input'}[{i}]" for i in range(count - len(names))]
    return names[:count]


class Function:
    def __call__(self, *inputs):
        tensors = [_t.as_tensor(x) for x in inputs]
        _check_one_device(self, tensors)
        # known before forward, as PyTorch's ctx.needs_input_grad: forward skips what only
        # a gradient nobody will ask for would use (an argmax, a labels gradient)
        recording = _t.grad_enabled()
        self.needs_input_grad = tuple(recording and t.requires_grad for t in tensors)
        record = any(self.needs_input_grad)
        # the one profiling hook (tinybn.profiler sets tensor.profiler while it runs): off, one `is None`
        profiler = _t.profiler
        arrays = [t.data for t in tensors]
        outputs = self.forward(*arrays) if profiler is None else profiler.forward(self, arrays)
        single = not isinstance(outputs, tuple)
        if single:
            outputs = (outputs,)
        results = [_t.Tensor(y, requires_grad=record) for y in outputs]
        if record:
            # a leaf is kept (its owner holds it anyway); of an intermediate only its place
            # in the graph, so its array is freed once nothing but this graph would hold it
            # (backward needs only what forward saved): ResNet-50's graph held 2.3x the memory
            self.inputs = [t if t.creator is None else _Edge(t) for t in tensors]
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for i, r in enumerate(results):
                r.creator, r.output_index = self, i
            saved = getattr(self, "saved", None)
            if saved:
                self.saved_versions = [(i, t, t.version) for i, t in enumerate(tensors)
                                       if t.creator is None and _holds(saved, t.data)]
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
    materialize_grads = True    # False: backward gets None, not zeros, for an output no gradient reached
    needs_input_grad = ()       # set by __call__ before forward
    saved_versions = ()     # (input index, leaf Tensor, its version at forward) per saved leaf

    def __repr__(self):
        return f"<{type(self).__name__}>"

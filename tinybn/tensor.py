"""Tensor: an array, its gradient, and the op that made it.

Floor: core (with function.py, state.py, arrays.py), the lowest; imports only numpy and
arrays.py (which array library holds an array).

    t = Tensor(data, requires_grad=False)
    t.data      the array (numpy, or cupy on the GPU backend)
    t.grad      the accumulated gradient (same shape as data), or None
    t.creator   the Function whose output t is (None for a leaf)

`y.backward(grad)` walks the graph behind y once, in reverse topological
order, and leaves d(sum(grad * y))/d(leaf) in each leaf's `.grad`, adding to
what was there (gradients accumulate across calls, as in TF's
aggregation of several losses and PyTorch's .grad). Intermediate tensors get
no `.grad`. The order is computed iteratively, so a graph thousands of layers
deep does not hit Python's recursion limit.

`t.register_post_accumulate_grad_hook(hook)` (PyTorch's name; t a leaf that requires
grad) returns a handle with .remove(). During each backward() that accumulates into
t.grad, hook(t) runs once, right after the last accumulation (after the last function,
in the walk's order, that has t as an input), so it sees the full gradient of that
backward while the rest of the graph is still being walked: data parallelism starts
reducing the gradients of the last layers there. A backward that gives t no gradient
does not call it. Only graphs with a hooked leaf pay for the bookkeeping.

In-place changes: the optimizers, ExponentialMovingAverage's swap and
load_state_dict change a parameter's value after a forward pass may have saved
its array for backward. Each of them calls `t.mark_modified(by, name)`, which
counts up `t.version` (PyTorch's version counter, shared with `t.detach()`).
A Function records the version of every leaf whose array it saved, and
backward() refuses a graph whose saved leaves changed since: with
retain_graph=True and an optimizer step in between, it would otherwise walk the
graph with the new weights and return a gradient of no function at all. Code
that writes into `.data` itself should call mark_modified after it likewise.

Operators (+ - * / @ ** unary -, [], reshape, transpose, .T, sum, mean, max) are
ops, so they live one floor up: tinybn.ops installs them on Tensor when it is imported
(tinybn/ops/__init__.py), and `import tinybn` imports tinybn.ops.

Dtypes: Python floats and lists of them become float32 (TF's default);
numpy arrays keep their dtype, so float64 works everywhere (the gradient
checks use it) and integer arrays stay integers (labels).
"""
import threading
import weakref
from contextlib import contextmanager

import numpy as np

from .arrays import array_module, to_numpy

_state = threading.local()
_hooked_leaves = weakref.WeakSet()    # leaves with a post-accumulate-grad hook: backward's fast path
profiler = None     # a tinybn.profiler.OpProfiler while one is active: Function calls and backward time through it


def grad_enabled():
    return getattr(_state, "grad_enabled", True)


@contextmanager
def no_grad():
    """Inside this block ops record nothing for backward (evaluation, updates)."""
    previous = grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


def _to_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        xp = array_module(data)
        return xp.asarray(data, dtype=dtype)
    if isinstance(data, (np.ndarray, np.generic)) or hasattr(data, "__cuda_array_interface__"):
        return data if hasattr(data, "ndim") and not isinstance(data, np.generic) else np.asarray(data)
    array = np.asarray(data)
    if array.dtype == np.float64:   # a Python float or list of floats: TF's default is float32
        array = array.astype(np.float32)
    return array


class _Version:
    """How often a tensor's value was changed in place, and by what the last time."""
    __slots__ = ("count", "by", "name")

    def __init__(self):
        self.count, self.by, self.name = 0, None, None


class Tensor:
    __array_priority__ = 100     # numpy defers `array * tensor` to Tensor.__rmul__
    _version = None              # a _Version once first modified (or detached); most tensors never are
    _post_accumulate_grad_hooks = None    # {key: hook} once one is registered

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _to_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise ValueError(f"only floating-point tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.creator = None
        self.output_index = 0       # which output of its creator this tensor is

    # --- what it is -------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def numpy(self):
        """The data as a host numpy array."""
        return to_numpy(self.data)

    def item(self):
        return self.numpy().item()

    def detach(self):
        """The same data, cut from the graph (and sharing its version counter)."""
        out = Tensor(self.data)
        out._version = self._version_counter()
        return out

    # --- in-place changes ---------------------------------------------------
    @property
    def version(self):
        """How many times the value was changed in place (by mark_modified)."""
        return 0 if self._version is None else self._version.count

    def mark_modified(self, by, name=None):
        """Record that `by` (say "GradientDescent.step()") changed the value of this tensor,
        known to it as `name`: graphs that saved the old value refuse to backward."""
        counter = self._version_counter()
        counter.count, counter.by, counter.name = counter.count + 1, by, name

    def _version_counter(self):
        if self._version is None:
            self._version = _Version()
        return self._version

    # --- hooks ---------------------------------------------------------------
    def register_post_accumulate_grad_hook(self, hook):
        """Call hook(self) in each backward() once it has accumulated all of this leaf's
        gradient into .grad (see the module docstring). Returns a handle: .remove() unhooks."""
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        if self.creator is not None or not self.requires_grad:
            what = (f"the output of {type(self.creator).__name__}" if self.creator is not None
                    else "a tensor with requires_grad=False")
            raise ValueError(f"register_post_accumulate_grad_hook: only a leaf that requires grad "
                             f"accumulates a .grad; this is {what}")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = {}
        handle = _HookHandle(self)
        self._post_accumulate_grad_hooks[handle] = hook
        _hooked_leaves.add(self)
        return handle

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{grad})"

    # --- backward ---------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(sum(grad * self))/d(leaf) into every leaf's .grad.

        grad: an array of self's shape; may be omitted when self is a scalar.
        retain_graph: keep saved buffers so the graph can be walked again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad())")
        xp = array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without grad needs a scalar, got shape {self.shape}; "
                                   "pass grad= an array of that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(_to_array(grad), dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(grad=...): grad has shape {grad.shape}, tensor has {self.shape}")
        if self.creator is None:
            _accumulate(self, grad)
            _run_hooks([self], {id(self)})
            return
        order = _reverse_topological(self.creator)
        _check_versions(order)          # before any gradient is accumulated
        grads = {(id(self.creator), self.output_index): grad}      # keyed by (Function, output)
        # hooked leaves by the index (in order) of their last consumer; the leaves reached so far
        hooks_after, reached = (_last_consumers(order), set()) if _hooked_leaves else (None, None)
        for step, fn in enumerate(order):
            gys = [grads.pop((id(fn), i), None) for i in range(len(fn.output_meta))]
            if any(g is not None for g in gys):
                if fn.released:
                    raise RuntimeError(
                        f"trying to backward through {fn!r} a second time: its saved buffers were freed "
                        "after the first backward. Pass retain_graph=True to the first backward "
                        "if the graph must be walked twice.")
                if fn.materialize_grads:
                    gys = [g if g is not None else xp.zeros(shape, dtype) for g, (shape, dtype)
                           in zip(gys, fn.output_meta)]
                gxs = fn.backward(*gys) if profiler is None else profiler.backward(fn, gys)
                if not isinstance(gxs, tuple):
                    gxs = (gxs,)
                if len(gxs) != len(fn.inputs):
                    raise RuntimeError(f"{fn!r}.backward returned {len(gxs)} gradients for {len(fn.inputs)} inputs")
                for x, gx in zip(fn.inputs, gxs):
                    if gx is None or not x.requires_grad:
                        continue
                    if gx.shape != x.shape:
                        raise RuntimeError(f"{fn!r}.backward gave a gradient of shape {gx.shape} "
                                           f"for an input of shape {x.shape}")
                    if x.creator is None:
                        _accumulate(x, gx)
                        if reached is not None:
                            reached.add(id(x))
                    else:
                        key = (id(x.creator), x.output_index)
                        grads[key] = grads[key] + gx if key in grads else gx
                if not retain_graph:
                    fn.release()
            if hooks_after and step in hooks_after:     # also when no gradient reached fn itself
                _run_hooks(hooks_after.pop(step), reached)


class _HookHandle:
    """What register_post_accumulate_grad_hook returns: .remove() takes the hook off again."""

    def __init__(self, tensor):
        self.tensor = tensor

    def remove(self):
        hooks = self.tensor._post_accumulate_grad_hooks
        hooks.pop(self, None)
        if not hooks:
            _hooked_leaves.discard(self.tensor)


def _last_consumers(order):
    """{index in order: [hooked leaves whose last consumer order[index] is]}, each leaf once,
    in the order of that function's inputs."""
    by_step, seen = {}, set()
    for step in range(len(order) - 1, -1, -1):
        for x in order[step].inputs:
            if x.creator is None and x._post_accumulate_grad_hooks and id(x) not in seen:
                seen.add(id(x))
                by_step.setdefault(step, []).append(x)
    return by_step


def _run_hooks(leaves, reached):
    for leaf in leaves:
        if id(leaf) in reached and leaf._post_accumulate_grad_hooks:
            for hook in list(leaf._post_accumulate_grad_hooks.values()):   # a hook may remove itself
                hook(leaf)


def as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _reverse_topological(root):
    """Functions behind `root`, each before every function that produced its inputs.

    Iterative depth-first post-order, then reversed: no recursion, so depth is
    unlimited.
    """
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.append((fn, True))
        for x in fn.inputs:
            if x.creator is not None and id(x.creator) not in seen:
                stack.append((x.creator, False))
    order.reverse()
    return order


def _check_versions(functions):
    """RuntimeError if a leaf whose array some function saved was changed in place since."""
    for fn in functions:
        for i, t, version in fn.saved_versions:
            if t.version != version and not fn.released:
                v = t._version
                what = f"{v.name!r}, shape {t.shape}" if v.name is not None else f"shape {t.shape}"
                raise RuntimeError(
                    f"{type(fn).__name__}'s input {i} ({what}) was modified in place by {v.by} after the "
                    f"forward pass saved it for backward; run the forward pass again before backward()")


def _accumulate(leaf, grad):
    leaf.grad = grad.copy() if leaf.grad is None else leaf.grad + grad

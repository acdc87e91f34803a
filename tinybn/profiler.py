"""Where a training step's time goes: every op's forward and backward, by layer, timed.

    with OpProfiler() as prof:          # process-wide while the block runs
        with prof.layer("conv1"):       # the ops called inside are filed under "conv1"
            y = conv(x)
        loss.backward()                 # each backward is filed where its forward was
        with prof.part("optimizer"):    # a named piece that is no op (the update, the EMA)
            opt.step()
    prof.rows()                         # [Row(layer, op, forward_s, backward_s, calls, flops)]

    training_step(model, optimizer, ema, images, labels)   step(prof=None): one training
                 step, each layer filed under its name when the model is a named sequence
    profile_training(model, optimizer, ema, images, labels, steps, warmup)   a Profile
                 of `steps` training steps after `warmup` untimed ones (what
                 `python -m tinybn.bench profile cifar` runs and prints)
    profile_steps(step, steps, warmup, op_name)   the same for any step(prof=None)
                 (`profile resnet` times its forward and forward-backward steps so)
    conv_kind    an op_name that tells convolutions apart by geometry: "Conv2D 3x3/2"
                 (KH x KW / stride)

How: Function.__call__ (tinybn/function.py) and Tensor.backward's walk (tinybn/tensor.py)
call forward and backward through `tinybn.tensor.profiler` when it is set, and directly
when it is None: an inactive profiler costs one `is None` test per op, and an active one
changes no result (it calls the same methods on the same arrays). An op is named by its
Function class (Conv2D, MatMul, FusedBatchNorm, ...), or by OpProfiler(op_name=...)'s
answer op_name(fn, arrays, layer) for the call (conv_kind: the conv's geometry); its layer is the innermost
`prof.layer(name)` open at its forward, and its backward is filed under the same layer.
One time is the wall-clock time of one call (time.perf_counter), threads included: the
numba kernels and BLAS run inside it. On the GPU (cupy arrays) a call only queues its
kernels, so the hooks synchronize the current stream before and after each call: the time
is then the kernels' own, and the profiled step loses the overlap of launches and kernels.

FLOPs are counted for the GEMM-shaped ops only, from their shapes (2 per multiply-add):
    Conv2D           forward  2 * N * OH * OW * KH * KW * C * O   (x, filters (KH, KW, C, O), y)
    DepthwiseConv2D  forward  2 * N * OH * OW * KH * KW * C * CM
    MatMul           forward  2 * size(Z) * K                     (Z = X @ Y, X (..., M, K))
    backward         the forward's count for each of the two operands that needs a gradient
                     (dW = cols^T @ dy and dx = dy @ W^T are GEMMs of the forward's size)
The count is the direct algorithm's whatever algorithm runs, so a conv done by Winograd
(fewer multiplies) shows its effective rate. Everything else (pooling, LRN, BN, relu, the
loss) is memory-bound and has no FLOP count.

A Profile's shares are of the mean step (profiler on): the ops, the named parts, and
"other", the step less all of them (Python: the graph walk, gradient accumulation,
zero_grad, the profiler's own bookkeeping), so they add up to 100%.

Floor: training (tests/test_layering.py); imports only the core (tensor) and backend.
"""
import time
import weakref
from collections import namedtuple
from contextlib import contextmanager

from . import backend
from . import tensor as _tensor
from .tensor import Tensor

Row = namedtuple("Row", "layer op forward_s backward_s forward_calls backward_calls forward_flops backward_flops")


def _conv_flops(arrays, outputs):
    w = arrays[1]          # (KH, KW, C, O); y = outputs[0] (N, OH, OW, O)
    return 2 * outputs[0].size * w.shape[0] * w.shape[1] * w.shape[2]


def _depthwise_flops(arrays, outputs):
    f = arrays[1]
    return 2 * outputs[0].size * f.shape[0] * f.shape[1]


def _matmul_flops(arrays, outputs):
    return 2 * outputs[0].size * arrays[0].shape[-1]


# Function class name -> forward FLOPs from (input arrays, output arrays); the GEMM operands
# are the first two inputs
GEMM_FLOPS = {"Conv2D": _conv_flops, "DepthwiseConv2D": _depthwise_flops, "MatMul": _matmul_flops}


def conv_kind(fn, arrays, layer=None):
    """An op's name with a Conv2D's geometry: "Conv2D KHxKW/S" (S the stride, written once when
    SH == SW); other ops by their class."""
    name = type(fn).__name__
    if name != "Conv2D":
        return name
    (KH, KW), (SH, SW) = arrays[1].shape[:2], fn.strides
    return f"Conv2D {KH}x{KW}/" + (f"{SH}" if SH == SW else f"{SH},{SW}")


def _synchronize(arrays):
    """Wait for the GPU's queued work when one of `arrays` lives there (a no-op on the host)."""
    for a in arrays:
        if a is not None and backend.on_device(a):
            backend.array_module(a).cuda.get_current_stream().synchronize()
            return


class OpProfiler:
    """Times every op's forward and backward while active (a context manager; see the module docstring)."""

    def __init__(self, op_name=None):
        self._op_name = op_name or (lambda fn, arrays, layer: type(fn).__name__)   # the row's op name
        self._rows = {}                         # (layer, op) -> [fwd s, bwd s, fwd calls, bwd calls, fwd fl, bwd fl]
        self._parts = {}                        # name -> [seconds, calls]
        self._where = weakref.WeakKeyDictionary()    # Function -> ((layer, op), its forward FLOPs)
        self._layer = None
        self._active = False

    def __enter__(self):
        if _tensor.profiler is not None:
            raise RuntimeError("OpProfiler: another profiler is already active; profile one thing at a time")
        _tensor.profiler, self._active = self, True
        return self

    def __exit__(self, *exc):
        _tensor.profiler, self._active = None, False

    @contextmanager
    def layer(self, name):
        """File the ops called inside under layer `name` (nested: the innermost name wins)."""
        outer, self._layer = self._layer, name
        try:
            yield
        finally:
            self._layer = outer

    @contextmanager
    def part(self, name):
        """Time a named piece of the step that is not an op (the optimizer's update, the EMA)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            entry = self._parts.setdefault(name, [0.0, 0])
            entry[0] += time.perf_counter() - start
            entry[1] += 1

    def reset(self):
        """Forget what was timed so far (after warm-up steps)."""
        self._rows.clear()
        self._parts.clear()

    # --- the hooks: Function.__call__ and Tensor.backward call these while active ---------------
    def forward(self, fn, arrays):
        _synchronize(arrays)
        start = time.perf_counter()
        outputs = fn.forward(*arrays)
        _synchronize(outputs if isinstance(outputs, tuple) else (outputs,))
        elapsed = time.perf_counter() - start
        count = GEMM_FLOPS.get(type(fn).__name__)
        flops = count(arrays, outputs if isinstance(outputs, tuple) else (outputs,)) if count else 0
        key = (self._layer, self._op_name(fn, arrays, self._layer))
        self._where[fn] = (key, flops)
        entry = self._entry(key)
        entry[0] += elapsed
        entry[2] += 1
        entry[4] += flops
        return outputs

    def backward(self, fn, gys):
        _synchronize(gys)
        start = time.perf_counter()
        gxs = fn.backward(*gys)
        _synchronize(gxs if isinstance(gxs, tuple) else (gxs,))
        elapsed = time.perf_counter() - start
        key, flops = self._where.get(fn, ((None, type(fn).__name__), 0))
        entry = self._entry(key)
        entry[1] += elapsed
        entry[3] += 1
        entry[5] += flops * sum(1 for need in fn.needs_input_grad[:2] if need)
        return gxs

    def _entry(self, key):
        entry = self._rows.get(key)
        if entry is None:
            entry = self._rows[key] = [0.0, 0.0, 0, 0, 0, 0]
        return entry

    # --- what was measured ------------------------------------------------------------------
    def rows(self):
        """One Row per (layer, op) in the order first seen, totals since the last reset."""
        return [Row(layer, op, *entry) for (layer, op), entry in self._rows.items()]

    def parts(self):
        """{name: (seconds, calls)} of the named parts."""
        return {name: tuple(entry) for name, entry in self._parts.items()}


class Profile:
    """What profile_training measured: per-step means of every (layer, op) and part, and the step."""

    def __init__(self, rows, parts, step_s, steps, unprofiled_step_s=None):
        self.steps, self.step_s, self.unprofiled_step_s = steps, step_s, unprofiled_step_s
        self.rows = [r._replace(forward_s=r.forward_s / steps, backward_s=r.backward_s / steps,
                                forward_calls=r.forward_calls / steps, backward_calls=r.backward_calls / steps,
                                forward_flops=r.forward_flops / steps, backward_flops=r.backward_flops / steps)
                     for r in rows]
        self.parts = {name: seconds / steps for name, (seconds, _) in parts.items()}
        self.other_s = step_s - sum(r.forward_s + r.backward_s for r in self.rows) - sum(self.parts.values())

    def share(self, seconds):
        """`seconds` (per step) as a percentage of the profiled step."""
        return 100.0 * seconds / self.step_s if self.step_s > 0 else 0.0

    def by_op(self):
        """The rows summed over layers, one per op class, by total time, longest first."""
        totals = {}
        for r in self.rows:
            t = totals.get(r.op)
            totals[r.op] = r._replace(layer=None) if t is None else t._replace(
                **{f: getattr(t, f) + getattr(r, f) for f in Row._fields[2:]})
        return sorted(totals.values(), key=lambda r: -(r.forward_s + r.backward_s))

    def format(self):
        """The tables `python -m tinybn.bench profile` prints."""
        lines = [f"mean step {1e3 * self.step_s:.1f} ms with the profiler on, over {self.steps} steps"
                 + (f"; {1e3 * self.unprofiled_step_s:.1f} ms with it off" if self.unprofiled_step_s else "")]
        op_width = max([len(r.op) for r in self.rows] + [10]) + 2
        layer_width = max([len(str(r.layer)) for r in self.rows if r.layer is not None] + [5]) + 2
        for title, rows, width in (("per op", self.by_op(), 0), ("per layer", self.rows, layer_width)):
            lines += ["", f"{title}:", _header(width, op_width)]
            lines += [_format_row(self, r, width, op_width) for r in rows]
        named = list(self.parts.items()) + [("other (Python, graph walk)", self.other_s)]
        width = layer_width + op_width
        lines += [""] + [f"{name:<{width}}{1e3 * s:8.2f} ms {self.share(s):6.1f}%" for name, s in named]
        return "\n".join(lines)


def _header(layer_width, op_width):
    return ((f"{'layer':<{layer_width}}" if layer_width else "") + f"{'op':<{op_width}}"
            f"{'fwd ms':>8}{'bwd ms':>8}{'share':>8}{'calls':>8}{'fwd GFLOP/s':>13}{'bwd GFLOP/s':>13}")


def _rate(flops, seconds):
    return f"{flops / seconds / 1e9:13.1f}" if flops and seconds > 0 else " " * 13


def _format_row(profile, r, layer_width, op_width):
    calls = f"{r.forward_calls:g}" + (f"/{r.backward_calls:g}" if r.backward_calls else "")
    return ((f"{r.layer or '':<{layer_width}}" if layer_width else "") + f"{r.op:<{op_width}}"
            f"{1e3 * r.forward_s:8.2f}{1e3 * r.backward_s:8.2f}{profile.share(r.forward_s + r.backward_s):7.1f}%"
            f"{calls:>8}{_rate(r.forward_flops, r.forward_s)}{_rate(r.backward_flops, r.backward_s)}").rstrip()


def _layers(model):
    """The model's (name, layer) pairs when it is a named sequence (model.net, a Sequential), else None."""
    net = getattr(model, "net", None)
    children = list(net.named_children()) if net is not None and hasattr(net, "layers") else []
    return children if children and len(children) == len(net.layers) else None


def training_step(model, optimizer, ema, images, labels):
    """step(prof=None): one training step (forward, layer by layer when the model is a named
    sequence; the loss; backward; the optimizer's update; the EMA of the weights), the loss as a
    float. Given `prof` (an active OpProfiler) it files each layer and part under its name."""
    named, layers = list(model.named_parameters()), _layers(model)
    images, labels = backend.device_array(images), backend.device_array(labels)

    def step(prof=None):
        layer = prof.layer if prof is not None else _no_scope
        part = prof.part if prof is not None else _no_scope
        model.train()
        x = Tensor(images)
        if layers is None:
            with layer("model"):
                x = model(x)
        else:
            for name, module in layers:
                with layer(name):
                    x = module(x)
        with layer("loss"):
            loss = model.loss(x, labels)
        model.zero_grad()
        loss.backward()
        with part("optimizer"):
            optimizer.step()
        if ema is not None:
            with part("ema"):
                ema.apply(named)
        return float(loss.item())
    return step


@contextmanager
def _no_scope(name):
    yield


def profile_training(model, optimizer, ema, images, labels, steps=10, warmup=3):
    """A Profile of `steps` training steps after `warmup` untimed ones, and the mean step of as
    many steps with the profiler off (run after, so that both see a warm process)."""
    return profile_steps(training_step(model, optimizer, ema, images, labels), steps, warmup,
                         caller="profile_training")


def profile_steps(step, steps=10, warmup=3, op_name=None, caller="profile_steps"):
    """A Profile of `steps` calls of step(prof) after `warmup` untimed step() calls, and the
    mean of as many step() calls with the profiler off; op_name: OpProfiler's."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"{caller}: steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        step()
    with OpProfiler(op_name) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(prof)
        step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for _ in range(steps):
        step()
    unprofiled = (time.perf_counter() - start) / steps
    return Profile(prof.rows(), prof.parts(), step_s, steps, unprofiled)

"""Window geometry shared by convolution and pooling: strides, dilations, padding.

TF's rule (tensorflow/core/framework/kernel_shape_util.cc, GetWindowedOutputSizeVerbose),
per spatial dimension with input size `n`, kernel `k`, stride `s`, dilation `d`:

    k_eff = (k - 1) * d + 1
    VALID:    out = (n - k_eff) // s + 1                  no padding
    SAME:     out = ceil(n / s)
              total = max(0, (out - 1) * s + k_eff - n)
              before = total // 2, after = total - before  (the odd pixel goes to bottom/right)
    explicit: [(top, bottom), (left, right)], out = (n + top + bottom - k_eff) // s + 1

So SAME padding depends on n mod s: 3x3/2 SAME on 24 pads (0, 1), not (1, 1).

Every windowed op (conv2d, depthwise_conv2d, separable_conv2d, spatially_separable_conv2d,
max_pool2d, avg_pool2d) validates its arguments here, once per call, on shapes only:
strides, dilations and ksize are positive ints (TF truncates 1.5 to 1 without a word;
here it is a TypeError), explicit pads are non-negative ints (1.7 is refused, not
truncated), filters have no zero-sized dimension (an empty sum would give zeros, not
an answer), input and filters have rank 4. A batch of N = 0 images is valid and gives
an empty output of the right shape, as in TF. The arithmetic itself (effective kernel,
output size, SAME pads) is tinybn.geometry's, which the kernels share.

Floor: ops (tests/test_layering.py): imports from tinybn only core, backend and ops.
"""
import numbers

from ..geometry import effective_size, output_size, same_pads, window

_EXPLICIT = "'SAME', 'VALID' or explicit [(top, bottom), (left, right)]"


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _prefix(op):
    return f"{op}: " if op else ""


def pair(value, name, op=None):
    """An int or a length-2 sequence as (h, w) of positive ints; TF's length-4 NHWC form
    [1, h, w, 1] too. TypeError for a non-int (1.5, True, None, "2"), ValueError for a
    wrong length or a value below 1; `op` prefixes the message."""
    where = _prefix(op)
    if _is_int(value):
        values = (int(value), int(value))
    else:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"{where}{name} must be an int or a pair of ints, got {value!r}")
        values = tuple(value)
        if len(values) == 4:
            if values[0] != 1 or values[3] != 1:
                raise ValueError(f"{where}{name}: the batch and channel entries of a length-4 {name} "
                                 f"must be 1, got {value!r}")
            values = values[1:3]
        if len(values) != 2:
            raise ValueError(f"{where}{name} must be an int or a pair of ints, got {value!r}")
        if not all(_is_int(v) for v in values):
            raise TypeError(f"{where}{name} must be an int or a pair of ints, got {value!r}")
        values = tuple(int(v) for v in values)
    if min(values) < 1:
        raise ValueError(f"{where}{name} must be positive, got {value!r}")
    return values


def window_padding(in_size, kernel, stride, dilation, padding, op=None):
    """((pad_top, pad_bottom), (pad_left, pad_right)) and (out_h, out_w) of a 2-D window op.

    in_size, kernel, stride, dilation: (h, w) pairs. padding: "SAME", "VALID" or
    [(top, bottom), (left, right)] (TF's 4-entry NHWC list is accepted too).
    Raises ValueError (TypeError for a non-int pad) naming the problem, prefixed by `op`.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            pads = ((0, 0), (0, 0))
        elif mode == "SAME":
            pads = tuple(same_pads(n, k, s, d) for n, k, s, d in zip(in_size, kernel, stride, dilation))
        else:
            raise ValueError(f"{_prefix(op)}padding must be {_EXPLICIT}, got {padding!r}")
    else:
        pads = _explicit(padding, op)
    out = []
    for dim, n, (before, after), k, s, d in zip("HW", in_size, pads, kernel, stride, dilation):
        if n + before + after < effective_size(k, d):
            raise ValueError(f"{_prefix(op)}kernel larger than the padded input along {dim}: effective kernel "
                             f"size {effective_size(k, d)} > input {n} + padding {before + after}")
        out.append(output_size(n, k, s, d, before, after))
    return pads, tuple(out)


def window_geometry(in_size, kernel, stride, dilation, padding, op=None):
    """window_padding's result as the Window the primitives take (tinybn.geometry.Window)."""
    pads, _ = window_padding(in_size, kernel, stride, dilation, padding, op)
    return window(in_size, kernel, stride, dilation, pads)


def _explicit(padding, op):
    where = _prefix(op)
    try:
        pads = [tuple(p) for p in padding]
    except TypeError:
        raise ValueError(f"{where}padding must be {_EXPLICIT}, got {padding!r}") from None
    bad = [v for p in pads for v in p if not _is_int(v)]
    if bad:
        raise TypeError(f"{where}explicit padding must hold ints (a pad is a number of pixels), got {bad[0]!r} "
                        f"in {padding!r}")
    pads = [tuple(int(v) for v in p) for p in pads]
    if len(pads) == 4:
        if pads[0] != (0, 0) or pads[3] != (0, 0):
            raise ValueError(f"{where}explicit padding of the batch and channel dimensions must be 0, got {padding!r}")
        pads = pads[1:3]
    if len(pads) != 2 or any(len(p) != 2 for p in pads) or min(min(p) for p in pads) < 0:
        raise ValueError(f"{where}explicit padding must be [(top, bottom), (left, right)] of non-negative ints, "
                         f"got {padding!r}")
    return tuple(pads)


_LAYOUTS = {"NHWC": "NHWC", "HWIO": "HWIO (KH, KW, C, O)", "HWCM": "(KH, KW, C, CM)"}


def check_rank(x, rank, op, name="input", layout=None):
    """ValueError unless x has `rank` dimensions; layout (NHWC, HWIO, HWCM) names them."""
    if x.ndim != rank:
        layout = _LAYOUTS.get(layout, layout) or {4: "NHWC", 2: "(N, C)"}.get(rank, f"rank {rank}")
        raise ValueError(f"{op}: {name} must be rank {rank} ({layout}), got shape {x.shape}")


def check_filter_dims(op, name, shape, dims):
    """ValueError naming the first zero-sized dimension of a filter: dims names each axis,
    e.g. ("kernel height KH", "kernel width KW", "input channels C", "output channels O")."""
    for size, dim in zip(shape, dims):
        if size < 1:
            raise ValueError(f"{op}: {name} {tuple(shape)} has {dim} = {size}; every filter dimension "
                             f"must be at least 1")


def check_data_format(data_format, op):
    """tinybn is NHWC only; None means TF's default, NHWC."""
    if data_format not in (None, "NHWC"):
        raise ValueError(f"{op}: data_format must be 'NHWC' (channels last), got {data_format!r}")

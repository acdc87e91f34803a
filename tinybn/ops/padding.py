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
"""
import numbers


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(value, name):
    """An int or a length-2 sequence as (h, w); TF's length-4 NHWC form [1, h, w, 1] too."""
    if _is_int(value):
        values = (int(value), int(value))
    else:
        values = tuple(value)
        if len(values) == 4:
            if values[0] != 1 or values[3] != 1:
                raise ValueError(f"{name}: the batch and channel entries of a length-4 {name} must be 1, got {value}")
            values = values[1:3]
        if len(values) != 2 or not all(_is_int(v) for v in values):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        values = tuple(int(v) for v in values)
    if min(values) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return values


def window_padding(in_size, kernel, stride, dilation, padding):
    """((pad_top, pad_bottom), (pad_left, pad_right)) and (out_h, out_w) of a 2-D window op.

    in_size, kernel, stride, dilation: (h, w) pairs. padding: "SAME", "VALID" or
    [(top, bottom), (left, right)] (TF's 4-entry NHWC list is accepted too).
    Raises ValueError naming the problem when the window does not fit.
    """
    k_eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            pads = ((0, 0), (0, 0))
        elif mode == "SAME":
            pads = []
            for n, k, s in zip(in_size, k_eff, stride):
                out = -(-n // s)
                total = max(0, (out - 1) * s + k - n)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            raise ValueError(f"padding must be 'SAME', 'VALID' or explicit [(top, bottom), (left, right)], got {padding!r}")
    else:
        pads = _explicit(padding)
    out = []
    for dim, n, (before, after), k, s in zip("HW", in_size, pads, k_eff, stride):
        if n + before + after < k:
            raise ValueError(f"kernel larger than the padded input along {dim}: effective kernel size {k} "
                             f"> input {n} + padding {before + after}")
        out.append((n + before + after - k) // s + 1)
    return pads, tuple(out)


def _explicit(padding):
    try:
        pads = [tuple(int(v) for v in p) for p in padding]
    except (TypeError, ValueError):
        raise ValueError(f"padding must be 'SAME', 'VALID' or explicit [(top, bottom), (left, right)], got {padding!r}")
    if len(pads) == 4:
        if pads[0] != (0, 0) or pads[3] != (0, 0):
            raise ValueError(f"explicit padding of the batch and channel dimensions must be 0, got {padding!r}")
        pads = pads[1:3]
    if len(pads) != 2 or any(len(p) != 2 for p in pads) or min(min(p) for p in pads) < 0:
        raise ValueError(f"explicit padding must be [(top, bottom), (left, right)] of non-negative ints, got {padding!r}")
    return tuple(pads)


def check_rank(x, rank, op, name="input"):
    if x.ndim != rank:
        layout = {4: "NHWC", 2: "(N, C)"}.get(rank, f"rank {rank}")
        raise ValueError(f"{op}: {name} must be rank {rank} ({layout}), got shape {x.shape}")


def check_data_format(data_format, op):
    """tinybn is NHWC only; None means TF's default, NHWC."""
    if data_format not in (None, "NHWC"):
        raise ValueError(f"{op}: data_format must be 'NHWC' (channels last), got {data_format!r}")

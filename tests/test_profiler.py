"""tinybn.profiler and `python -m tinybn.bench profile`: calls and FLOPs against the models'
closed forms (the fast recipe's step in both whitening-bias phases too), shares that add up, no
trace of an inactive profiler, one-line errors."""
import argparse

import numpy as np
import pytest

from tinybn import optim, tensor
from tinybn.bench import main as bench_main
from tinybn.models import cifar10
from tinybn.moving_averages import ExponentialMovingAverage
from tinybn.profiler import OpProfiler, profile_training, training_step
from tinybn.tasks.cifar_fast import profile_fast

N = 2       # images per batch: the counts scale with it, the time does not matter here

# calls per step of each op class (forward and backward alike), from the models' layers
# (tinybn/models/cifar10.py): the tutorial has 2 convs with biases, 3 dense layers (a matmul
# and a bias each), 4 relus, 2 max pools, 2 LRNs, weight decay on 2 kernels
CALLS = {
    "tutorial": {"Conv2D": 2, "BiasAdd": 5, "Relu": 4, "MaxPool2D": 2, "LocalResponseNormalization": 2,
                 "MatMul": 3, "Reshape": 1, "L2Loss": 2, "Mul": 2, "Add": 2, "Mean": 1,
                 "SparseSoftmaxCrossEntropyWithLogits": 1},
    "bn": {"Conv2D": 3, "FusedBatchNormTraining": 3, "Relu": 3, "MaxPool2D": 2, "AvgPool2D": 1, "Reshape": 1,
           "Mean": 1, "SparseSoftmaxCrossEntropyWithLogits": 1},
}


def _batch(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 24, 24, 3), dtype=np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _run(name, seed=0):
    """(model, optimizer, ema) as the trainer builds them (SGD or Adam, EMA 0.9999)."""
    model = cifar10.MODELS[name](rng=np.random.default_rng(seed))
    named = list(model.named_parameters())
    opt = optim.Adam(named, 0.04) if name == "bn" else optim.GradientDescent(named, 0.1)
    ema = ExponentialMovingAverage(0.9999, num_updates=lambda: opt.iterations)
    ema.apply(named, num_updates=0)
    return model, opt, ema


@pytest.fixture(scope="module", params=sorted(CALLS))
def profiled(request):
    model, opt, ema = _run(request.param)
    return request.param, profile_training(model, opt, ema, *_batch(), steps=2, warmup=1)


def test_calls_per_step_are_the_models_closed_form(profiled):
    name, profile = profiled
    by_op = {r.op: r for r in profile.by_op()}
    assert {op: r.forward_calls for op, r in by_op.items()} == CALLS[name]
    assert {op: r.backward_calls for op, r in by_op.items()} == CALLS[name]
    # and each layer of the model's sequence calls its op once
    layers = {r.layer for r in profile.rows}
    assert {n for n, _ in model_layers(name)} <= layers


def model_layers(name):
    return list(cifar10.MODELS[name](rng=np.random.default_rng(0)).net.named_children())


def test_the_shares_add_up_to_the_step(profiled):
    _, profile = profiled
    ops = sum(profile.share(r.forward_s + r.backward_s) for r in profile.rows)
    parts = sum(profile.share(s) for s in profile.parts.values())
    assert set(profile.parts) == {"optimizer", "ema"}
    assert ops + parts + profile.share(profile.other_s) == pytest.approx(100.0, abs=1e-9)
    assert min(r.forward_s for r in profile.rows) >= 0 and profile.other_s > 0
    assert profile.unprofiled_step_s > 0


def test_conv_and_matmul_flops_are_counted_from_their_shapes(profiled):
    name, profile = profiled
    rows = {r.layer: r for r in profile.rows if r.op in ("Conv2D", "MatMul")}
    # (layer, OH, OW, C, O): 5x5 SAME convs; the first one's images need no gradient
    convs = {"tutorial": [("conv1", 24, 24, 3, 64), ("conv2", 12, 12, 64, 64)],
             "bn": [("conv1", 24, 24, 3, 64), ("conv2", 12, 12, 64, 64), ("conv3", 6, 6, 64, 10)]}[name]
    for layer, oh, ow, c, o in convs:
        flops = 2 * N * oh * ow * 5 * 5 * c * o
        assert rows[layer].forward_flops == flops
        assert rows[layer].backward_flops == (1 if layer == "conv1" else 2) * flops
    if name == "tutorial":
        for layer, k, units in (("local3", 2304, 384), ("local4", 384, 192), ("softmax_linear", 192, 10)):
            assert rows[layer].forward_flops == 2 * N * k * units
            assert rows[layer].backward_flops == 2 * 2 * N * k * units
    text = profile.format()
    assert "conv2" in text and "other (Python, graph walk)" in text and "GFLOP/s" in text


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_profiled_step_computes_what_an_unprofiled_one_does_bitwise(name):
    runs = []
    for profiled in (False, True):
        model, opt, ema = _run(name, seed=3)
        step = training_step(model, opt, ema, *_batch(seed=4))
        if profiled:
            with OpProfiler() as prof:
                losses = [step(prof) for _ in range(2)]
        else:
            losses = [step() for _ in range(2)]
        runs.append((losses, [p.numpy().copy() for _, p in model.named_parameters()]))
    assert tensor.profiler is None
    (losses0, params0), (losses1, params1) = runs
    assert losses0 == losses1
    for a, b in zip(params0, params1):
        np.testing.assert_array_equal(a, b)


def test_one_profiler_at_a_time_and_none_left_behind_after_an_error():
    with OpProfiler():
        with pytest.raises(RuntimeError, match="another profiler is already active"):
            OpProfiler().__enter__()
    assert tensor.profiler is None
    with pytest.raises(ZeroDivisionError):
        with OpProfiler():
            1 / 0
    assert tensor.profiler is None


def test_a_backward_whose_forward_was_not_profiled_is_filed_without_a_layer():
    from tinybn.ops.basic import relu
    x = tensor.Tensor(np.array([-1.0, 2.0], np.float32), requires_grad=True)
    y = relu(x)
    with OpProfiler() as prof:
        y.backward(np.ones(2, np.float32))
    (row,) = prof.rows()
    assert (row.layer, row.op, row.forward_calls, row.backward_calls) == (None, "Relu", 0, 1)
    np.testing.assert_array_equal(x.grad, [0.0, 1.0])


@pytest.mark.parametrize("steps, warmup", [(0, 1), (1, -1)])
def test_profile_training_refuses_bad_counts(steps, warmup):
    model, opt, ema = _run("bn")
    with pytest.raises(ValueError, match="steps must be >= 1 and warmup >= 0"):
        profile_training(model, opt, ema, *_batch(), steps=steps, warmup=warmup)


@pytest.mark.parametrize("argv, message", [
    (["profile"], "the following arguments are required: task"),
    (["profile", "imagenet"], "invalid choice: 'imagenet'"),
    (["profile", "cifar", "--model", "vgg"], "invalid choice: 'vgg'"),
    (["profile", "cifar", "--steps", "0"], "must be >= 1, got 0"),
    (["profile", "cifar", "--warmup", "-1"], "must be >= 0, got -1"),
    (["profile", "cifar", "--backend", "tpu"], "invalid choice: 'tpu'"),
    (["profile", "resnet", "--depth", "34"], "invalid choice: 34"),
    (["profile", "resnet", "--mode", "backward"], "invalid choice: 'backward'"),
    (["profile", "resnet", "--image-size", "0"], "must be >= 1, got 0"),
    (["profile", "cifar", "--model", "bn", "--whitening-bias", "frozen"], "a flag of profile cifar --model fast"),
    (["profile", "cifar", "--model", "fast", "--whitening-bias", "thawed"], "invalid choice: 'thawed'"),
])
def test_bad_flags_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_command_prints_the_tables(capsys):
    assert bench_main(["profile", "cifar", "--model", "tutorial", "--backend", "numpy", "--batch-size", "2",
                       "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "cifar tutorial: batch 2, backend numpy" in out
    for line in ("per op:", "per layer:", "optimizer", "ema", "other (Python, graph walk)"):
        assert line in out
    conv2 = next(line for line in out.splitlines() if line.startswith("conv2") and "Conv2D" in line)
    assert conv2.split()[5] == "1/1"       # layer, op, fwd ms, bwd ms, share, calls, GFLOP/s ...


# the fast model's convs per layer (tinybn/models/cifar_fast.py, 32x32 images): (OH, OW, KH*KW, C, O);
# the whitening conv is 2x2 VALID (31x31), each block's first conv runs before its 2x2 max pool
FAST_CONVS = {"whiten": [(31, 31, 4, 3, 24)],
              "block1": [(31, 31, 9, 24, 64), (15, 15, 9, 64, 64)],
              "block2": [(15, 15, 9, 64, 256), (7, 7, 9, 256, 256)],
              "block3": [(7, 7, 9, 256, 256), (3, 3, 9, 256, 256)]}


@pytest.mark.parametrize("whitening_bias", ["frozen", "trains"])
def test_the_fast_step_profile_follows_the_whitening_bias_phase(whitening_bias, capsys):
    """The whitening conv never has a backward (a frozen kernel on the images); its bias's BiasAdd
    has one while the bias trains, and only then does block1's first conv compute its input gradient."""
    args = argparse.Namespace(seed=0, batch_size=N, backend="numpy", whitening_bias=whitening_bias, steps=1, warmup=0)
    profile, update_s = profile_fast(args)
    rows = {(r.layer, r.op): r for r in profile.rows}
    trains = whitening_bias == "trains"
    for layer, convs in FAST_CONVS.items():
        row = rows[layer, "Conv2D"]
        flops = [2 * N * oh * ow * taps * c * o for oh, ow, taps, c, o in convs]
        assert (row.forward_calls, row.forward_flops) == (len(convs), sum(flops))
        if layer == "whiten":
            assert (row.backward_calls, row.backward_flops) == (0, 0)
        elif layer == "block1":
            assert row.backward_flops == (2 if trains else 1) * flops[0] + 2 * flops[1]
        else:
            assert row.backward_flops == 2 * sum(flops)
    assert rows["whiten", "BiasAdd"].backward_calls == (1 if trains else 0)
    assert rows["dense", "MatMul"].backward_flops == 2 * 2 * N * 256 * 10
    assert set(profile.parts) == {"optimizer"} and update_s > 0
    out = capsys.readouterr().out
    assert f"cifar fast: batch {N}, backend numpy, whitening bias {whitening_bias}" in out
    assert "Lookahead update: " in out and "every 5th step of a run" in out


def test_the_fast_command_defaults_to_the_frozen_bias(capsys):
    assert bench_main(["profile", "cifar", "--model", "fast", "--backend", "numpy", "--batch-size", "2",
                       "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "cifar fast: batch 2, backend numpy, whitening bias frozen" in out and "per layer:" in out

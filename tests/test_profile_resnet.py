"""`python -m tinybn.bench profile resnet`: resnet_v2_50's steps op by op. The calls per op
kind against the network's closed form, the conv FLOPs against tasks.resnet.conv_flops,
shares that add up, a profiled step equal to an unprofiled one."""
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest

from tinybn import tensor
from tinybn.bench import main as bench_main
from tinybn.models.resnet_v2 import UNITS, Block, Bottleneck, ResNetV2, resnet_v2_50
from tinybn.profiler import OpProfiler
from tinybn.tasks.resnet import conv_flops, make_inputs, profile_resnet, resnet_steps

N, S, CLASSES = 1, 32, 10     # a tiny batch: the counts do not depend on the size, the time does not matter
STAGES = {"conv1", "pool1", "block1", "block2", "block3", "block4", "postnorm", "logits"}


def _calls(units=UNITS[50]):
    """Calls per step of each op kind in resnet_v2_<depth> (slim's layout, models/resnet_v2.py):
    per unit a preact BN + relu, conv1 1x1 and conv2 3x3 each with BN + relu, conv3 1x1 + biases and
    the add; a 1x1 shortcut conv + biases in each block's first unit (the depth changes there), a
    1x1/2 max pool of the input as the shortcut of each stride-2 unit (the last of blocks 1-3); the
    root 7x7/2 conv + biases and its 3x3/2 max pool; postnorm BN + relu, the mean, the logits."""
    blocks, total, strided = len(units), sum(units), 3
    bn = total + 2 * total + 1
    return {"Conv2D 1x1/1": 2 * total + blocks, "Conv2D 3x3/1": total - strided, "Conv2D 3x3/2": strided,
            "Conv2D 7x7/2": 1, "Conv2D logits (dense)": 1, "Relu": bn, "MaxPool2D": 1 + strided,
            "BiasAdd": 1 + blocks + total + 1, "Add": total, "Mean": 1, "Reshape": 1}


@pytest.fixture(scope="module")
def profiles():
    args = SimpleNamespace(depth=50, batch_size=N, image_size=S, num_classes=CLASSES, seed=0, steps=1, warmup=0,
                           mode="both", backend="numpy")
    return profile_resnet(args, log=lambda line: None)


@pytest.mark.parametrize("mode, bn, extra", [
    ("forward", "FusedBatchNormInference", {"Softmax": 1}),
    ("forward-backward", "FusedBatchNormTraining",
     # the loss: weight decay on every conv kernel (53 convs + logits), the mean cross-entropy
     {"Softmax": 1, "L2Loss": 54, "Mul": 54, "Mean": 2, "SparseSoftmaxCrossEntropyWithLogits": 1})])
def test_calls_per_op_kind_are_the_networks_closed_form(profiles, mode, bn, extra):
    profile = profiles[mode]
    calls = dict(_calls(), **{bn: _calls()["Relu"]}, **extra)
    adds = 53 + 1                        # the weight decay terms summed, and that sum added to the mean
    calls["Add"] += adds if mode == "forward-backward" else 0
    assert {r.op: r.forward_calls for r in profile.by_op()} == calls
    backward = {r.op: r.backward_calls for r in profile.by_op() if r.backward_calls}
    assert backward == ({} if mode == "forward" else {op: n for op, n in calls.items() if op != "Softmax"})
    assert {r.layer for r in profile.rows} == STAGES | ({"loss"} if mode == "forward-backward" else set())


@pytest.fixture(scope="module")
def benchmark_flops():
    return conv_flops(resnet_v2_50(num_classes=CLASSES, rng=np.random.default_rng(0)), N, S, S)


@pytest.mark.parametrize("mode", ["forward", "forward-backward"])
def test_the_shares_add_up_and_the_conv_flops_are_the_benchmarks(profiles, benchmark_flops, mode):
    profile = profiles[mode]
    assert profile.parts == {}
    total = sum(profile.share(r.forward_s + r.backward_s) for r in profile.rows) + profile.share(profile.other_s)
    assert total == pytest.approx(100.0, abs=1e-9)
    convs = [r for r in profile.rows if r.op.startswith("Conv2D")]
    counted = sum(r.forward_flops + r.backward_flops for r in convs)
    assert counted == benchmark_flops[mode == "forward-backward"]
    # the root conv alone, by hand: 32 -> 16 (pad (2, 3) then VALID), 7x7x3 -> 64, no input gradient
    (root,) = [r for r in convs if r.op == "Conv2D 7x7/2"]
    assert root.forward_flops == 2 * N * 16 * 16 * 7 * 7 * 3 * 64
    assert root.backward_flops == (root.forward_flops if mode == "forward-backward" else 0)
    text = profile.format()
    assert "Conv2D 3x3/2" in text and "block4" in text and "GFLOP/s" in text


def test_a_profiled_step_computes_what_an_unprofiled_one_does_bitwise():
    """On a one-unit network (the stages are the same code at any depth)."""
    images, labels = make_inputs(2, 16, 5, seed=1)
    runs = []
    for profiled in (False, True):
        model = ResNetV2([Block("block1", Bottleneck, [(8, 2, 2)])], num_classes=5, rng=np.random.default_rng(2))
        forward, forward_backward = resnet_steps(model, images, labels)
        with OpProfiler() if profiled else nullcontext() as prof:
            logits, loss = forward(prof), forward_backward(prof)
        runs.append((logits, loss, [p.grad.copy() for _, p in model.named_parameters()]))
    assert tensor.profiler is None
    (logits0, loss0, grads0), (logits1, loss1, grads1) = runs
    np.testing.assert_array_equal(logits0, logits1)
    assert loss0 == loss1
    for a, b in zip(grads0, grads1):
        np.testing.assert_array_equal(a, b)


def test_the_command_prints_the_mode_asked_for(capsys):
    assert bench_main(["profile", "resnet", "--image-size", "32", "--batch-size", "1", "--num-classes", "10",
                       "--steps", "1", "--warmup", "0", "--mode", "forward", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "resnet_v2_50 forward: batch 1, 32x32x3, backend numpy" in out
    assert "forward-backward" not in out
    root = next(line for line in out.splitlines() if line.startswith("conv1") and "Conv2D 7x7/2" in line)
    assert root.split()[6] == "1"        # layer, op (2 words), fwd ms, bwd ms, share, calls

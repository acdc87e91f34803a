"""bench/gpu_check.sh without a GPU: valid bash, parts bounded in time, its Python blocks compile, and
the comparison's protocol and ratios on fake frameworks timed by a fake clock."""
import os
import re
import subprocess
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
TEXT = open(SCRIPT).read()
BLOCKS = re.findall(r"<<'PY'\n(.*?)\nPY\n", TEXT, re.S)


def test_valid_bash_and_every_part_bounded():
    """Each of the two commands it is run as fits one command of the device tool (600 s): the
    default parts, and "install tests fast"."""
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    limits = [(name, int(s)) for name, s in re.findall(r'^\s*part "\$\{(T_\w+):-(\d+)\}"', TEXT, re.M)]
    assert limits == [("T_INSTALL", 60), ("T_TESTS", 120), ("T_CIFAR", 120), ("T_RESNET", 160), ("T_CLI", 45),
                      ("T_CLI", 45), ("T_FAST", 360)]
    seconds = dict(limits)
    assert sum(s for name, s in limits if name != "T_FAST") == 550 <= 600
    assert seconds["T_INSTALL"] + seconds["T_TESTS"] + seconds["T_FAST"] == 540 <= 600
    assert "(the limits add up to 550 s)" in TEXT and "its limits 540 s in all" in TEXT


@pytest.mark.parametrize("index", range(2))
def test_python_blocks_compile(index):
    assert len(BLOCKS) == 2
    compile(BLOCKS[index], f"gpu_check.sh block {index}", "exec")


def test_compare_protocol_on_a_fake_clock(capsys):
    compare = types.ModuleType("gpu_compare")
    exec(compile(BLOCKS[0], "gpu_compare", "exec"), compare.__dict__)
    clock = [0.0]
    compare.time = types.SimpleNamespace(perf_counter=lambda: clock[0])
    compare.sync = lambda: None
    calls = []

    def step(name, kind, seconds, loss):
        def run():
            calls.append((name, kind))
            clock[0] += seconds
            return loss
        return run
    frameworks = {fw: {"train": step(fw, "train", train_s, 2.3), "fwd": step(fw, "fwd", fwd_s, None)}
                  for fw, train_s, fwd_s in (("tinybn-cupy", 0.002, 0.001), ("torch", 0.004, 0.0008))}
    first, times = compare.measure(frameworks)
    per_kind = compare.ROUNDS * compare.BLOCKS * compare.BLOCK
    assert [len(ts) for ts in times["torch"]["train"]] == [compare.BLOCKS * compare.BLOCK] * compare.ROUNDS
    assert calls.count(("torch", "train")) == 1 + compare.WARMUP + per_kind
    # the turns: after the first calls and the warm-up, blocks of BLOCK steps, the starting framework rotating
    timed_calls = calls[2 * 2 * (1 + compare.WARMUP):]
    n = compare.BLOCK
    assert timed_calls[:2 * n] == [("tinybn-cupy", "train")] * n + [("torch", "train")] * n
    assert timed_calls[2 * compare.BLOCK] == ("torch", "train")
    compare.report("bn, eager", first, times)
    out = capsys.readouterr().out
    assert re.search(r"tinybn-cupy\s+train\s+2\.00 ms  ×torch 0\.50 \(0\.50-0\.50\)  first call 0\.00 s", out)
    assert re.search(r"tinybn-cupy\s+fwd\s+1\.00 ms  ×torch 1\.25 \(1\.25-1\.25\)", out)
    assert "WARNING" not in out
    frameworks["torch"]["train"] = step("torch", "train", 0.004, 2.5)
    compare.report("bn, eager", *compare.measure(frameworks))
    assert "WARNING: first-step loss 2.500000 (torch) != 2.300000 (tinybn-cupy)" in capsys.readouterr().out


def test_what_the_comparison_imports_exists():
    """The names gpu_compare.py takes from the bench scripts and tinybn (it imports them only on the GPU)."""
    import inspect
    import sys
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import _peers
    import _torch_resnet
    import bench_cifar
    from tinybn.models.resnet_v2 import resnet_v2, slim_names  # noqa: F401
    from tinybn.tasks.resnet import make_inputs, resnet_steps  # noqa: F401
    assert callable(bench_cifar.initial_state) and callable(bench_cifar.tinybn_adapter)
    for fn in (_peers.torch_adapter, _torch_resnet.torch_steps):
        assert {"compile", "device"} <= set(inspect.signature(fn).parameters)

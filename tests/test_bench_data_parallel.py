"""bench/bench_data_parallel.py and bench/dp_cost_model.py: the cost model's arithmetic against
closed forms worked by hand, the report's ratios, and one tiny real run under mpiexec -n 2."""
import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_data_parallel.py")


def _load():
    spec = importlib.util.spec_from_file_location("bench_data_parallel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()
import dp_cost_model as cost  # noqa: E402  (bench/ is on sys.path once the script is loaded)


@pytest.mark.parametrize("nbytes, nodes, gbps, seconds", [
    (100e6, 4, 10, 0.12),                      # 2 * 3/4 * 1e8 B / 1.25e9 B/s
    (4_273_192, 2, 25, 4_273_192 / 3.125e9),   # K = 2: each node sends the whole buffer once
    (102.3e6, 64, 100, 2 * 63 / 64 * 102.3e6 / 12.5e9),
    (1e6, 1, 10, 0.0),                         # one node sends nothing
])
def test_ring_allreduce_is_2_k_minus_1_over_k_bytes_over_bandwidth(nbytes, nodes, gbps, seconds):
    w = cost.bytes_per_second(gbps)
    assert cost.ring_allreduce_seconds(nbytes, nodes, w) == pytest.approx(seconds, rel=1e-12)
    if nodes > 1:       # the bus bandwidth of a measured time gives the time back
        assert cost.bus_bandwidth(nbytes, nodes, seconds) == pytest.approx(w, rel=1e-12)


def _node(gradient_bytes, last_bytes, forward=0.1, backward=0.2, update=0.05):
    return cost.node_figures("m", gradient_bytes // 4, last_bytes, {"forward": forward, "backward": backward,
                                                                    "update": update}, 8, "by hand")


@pytest.mark.parametrize("gradient_bytes, last_bytes, step", [
    # 10 Gb/s, K = 2: A(n) = n / 1.25e9. Allreduce longer than backward: 0.1 + A(9e8) + A(1e8) + 0.05
    (1_000_000_000, 100_000_000, 0.1 + 0.72 + 0.08 + 0.05),
    # backward longer: the hidden part disappears, the last bucket does not: 0.1 + 0.2 + A(1e7) + 0.05
    (100_000_000, 10_000_000, 0.1 + 0.2 + 0.008 + 0.05),
])
def test_overlap_model_hides_all_but_the_last_bucket(gradient_bytes, last_bytes, step):
    node, w = _node(gradient_bytes, last_bytes), cost.bytes_per_second(10)
    assert node["gradient_bytes"] == gradient_bytes
    assert cost.step_seconds(node, 2, w) == pytest.approx(step, rel=1e-12)
    assert cost.step_seconds(node, 1, w) == pytest.approx(0.35, rel=1e-12)
    assert cost.efficiency(node, 2, w) == pytest.approx(0.35 / step, rel=1e-12)


def test_projection_table_cells():
    node = _node(1_000_000_000, 100_000_000)
    rows = cost.projection([node], gbps=(10,), nodes=(2, 4))
    # K = 4: A(n) = 1.5 n / 1.25e9; step = 0.1 + 1.08 + 0.12 + 0.05 = 1.35
    assert rows[0]["efficiency"][4] == pytest.approx(0.35 / 1.35, rel=1e-12)
    assert rows[0]["allreduce_s"][4] == pytest.approx(1.2, rel=1e-12)
    text = cost.format_projection([node], markdown=True, gbps=(10,), nodes=(2, 4))
    # 0.35/0.95, 0.35/1.35; A(G) and A(G - G_last) at K = 4
    assert "| m | 10 Gb/s | 36.8% | 25.9% | 1200.0 ms | 1080.0 ms |" in text


def test_tutorial_parameters_and_buckets_from_its_layer_shapes():
    from tinybn.models import cifar10
    net = cifar10.MODELS["tutorial"](rng=np.random.default_rng(0))
    conv = (5 * 5 * 3 * 64 + 64) + (5 * 5 * 64 * 64 + 64)             # conv1, conv2
    dense = (2304 * 384 + 384) + (384 * 192 + 192) + (192 * 10 + 10)   # local3, local4, softmax_linear
    assert cost.count_parameters(net) == conv + dense == 1_068_298
    # reverse order; a bucket closes at >= 2 MiB: the dense layers (3.8 MB), then the convolutions
    assert cost.bucket_bytes(net) == [4 * dense, 4 * conv]
    assert cost.bucket_bytes(net, bucket_bytes=0)[-1] == 4 * 5 * 5 * 3 * 64     # one per tensor: conv1's kernel last


def _run(images_per_s, phases=None, **extra):
    return dict({"status": "ok", "images_per_s": images_per_s, "step_times": [128 / images_per_s] * 2,
                 "phases": phases or {"forward": 0.1, "backward": 0.2, "update": 0.05}}, **extra)


def test_ratio_is_taken_within_each_round():
    comm = {"allreduce_s": [0.01, 0.03], "wait_s": [0.0, 0.002], "buckets": 2, "bytes": 4_273_212}
    report = {"runs": {"tutorial": {"1x2": [_run(500), _run(250)], "2x1": [_run(450, **comm), _run(275, **comm)],
                                    "1x1": [_run(260), _run(130)]}}}
    rows = bench.throughput_rows(report)
    cells = dict(zip(rows[0], rows[1]))
    # per round 0.90 and 1.10 (a slow second round for everyone), though 450/250 and 275/500 would not be
    assert cells["(b)/(a)"] == "1.00x [0.90x-1.10x]"
    assert cells["(a) 1x2 img/s"] == "375.0 [250.0-500.0]"
    assert cells["in sum_ ms/step"] == "20.0 [20.0-20.0]" and cells["not hidden ms/step"] == "1.0 [1.0-1.0]"
    assert cells["buckets"] == "2 (4.27 MB)"
    report["runs"]["tutorial"]["2x1"][1] = {"status": "error", "reason": "exit code 1: boom"}
    assert bench.throughput_rows(report)[1][1] == "error: exit code 1: boom"


def test_bad_arguments_are_refused():
    for argv in (["--models", "tutorial,vgg"], ["--batch-size", "7"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def _run_script(*argv, timeout):
    """(exit code, stdout, stderr) of the script; on a timeout its whole process group is killed
    (mpiexec and its ranks with it) and the test fails."""
    proc = subprocess.Popen([sys.executable, SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"no result within {timeout} s: {stderr[-2000:]}")
    return proc.returncode, stdout, stderr


def test_tiny_run_under_mpiexec(tmp_path):
    out = tmp_path / "dp.json"
    code, stdout, stderr = _run_script("--models", "tutorial", "--batch-size", "8", "--steps", "2", "--warmup", "1",
                                       "--phase-steps", "1", "--rounds", "1", "--backend", "numpy",
                                       "--resnet-batch", "1", "--resnet-image-size", "32", "--resnet-steps", "1",
                                       "--resnet-node-batch", "2", "--worker-timeout", "150", "--markdown",
                                       "--json", str(out), timeout=240)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    runs = report["runs"]["tutorial"]
    assert [r["status"] for c in bench.CONFIGS for r in runs[c]] == ["ok"] * 3, runs
    single, dp, alone = runs["1x2"][0], runs["2x1"][0], runs["1x1"][0]
    assert (single["replicas"], single["batch_per_replica"], alone["batch_per_replica"]) == (1, 8, 4)
    assert (dp["replicas"], dp["batch_per_replica"]) == (2, 4)
    assert dp["describe"].startswith("data parallel: 2 replicas, backend numpy, batch 4 per replica (global 8)")
    params = report["models"]["tutorial"]["params"]
    # the buckets' flat buffers: every gradient, then one used flag per parameter tensor (10)
    assert (dp["buckets"], dp["bytes"]) == (2, 4 * params + 4 * 10)
    assert len(dp["allreduce_s"]) == len(dp["wait_s"]) == len(dp["step_times"]) == 2
    for r in (single, dp, alone):
        assert r["images_per_s"] == pytest.approx(2 * 8 / sum(r["step_times"]))
        assert all(t > 0 for t in r["phases"].values())
    assert [s["bytes"] for s in report["allreduce"]["sizes"]] == [4 * params]
    resnet = report["resnet"]
    assert resnet["status"] == "ok" and resnet["params"] == 25_568_360      # Keras's ResNet50V2: trainable
    assert "| tutorial |" in stdout and "| resnet_v2_50 | 10 Gb/s |" in stdout
    assert _run_script("--from-json", str(out), "--markdown", timeout=60)[:2] == (0, stdout)

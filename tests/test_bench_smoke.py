"""bench/bench_cifar.py: the FLOP count, the report, missing frameworks, and one tiny real run (tinybn numpy)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_cifar.py")


def _load():
    spec = importlib.util.spec_from_file_location("bench_cifar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()
import _report  # noqa: E402  (bench/ is on sys.path once bench_cifar is loaded)


def _gemm_flops_of_model(name, n):
    """2 x the multiply-adds of every conv and dense layer of the real model, from the shapes its
    forward sees on a batch of n images: (forward, training step) FLOPs."""
    from tinybn.models import cifar10
    from tinybn.nn.layers import Conv2D, Dense
    x = np.zeros((n,) + bench.IMAGE, np.float32)
    per_layer = []
    for _, layer in cifar10.MODELS[name](rng=np.random.default_rng(0)).net.named_children():
        y = layer(x)
        if isinstance(layer, Conv2D):
            kh, kw, c, _ = layer.kernel.shape
            per_layer.append(2 * y.size * kh * kw * c)         # one kh*kw*c dot product per output
        elif isinstance(layer, Dense):
            per_layer.append(2 * x.shape[0] * layer.kernel.size)
        x = y
    # backward: a weight gradient for every layer, an input gradient for all but the first
    return sum(per_layer), 3 * sum(per_layer) - per_layer[0]


@pytest.mark.parametrize("model", bench.MODELS)
@pytest.mark.parametrize("n", [1, 3])
def test_model_flops_match_the_models_layers(model, n):
    assert bench.model_flops(model, n) == _gemm_flops_of_model(model, n)


def _row(framework, model, train_s, fwd_s, loss0=2.3):
    return {"framework": framework, "model": model, "status": "ok", "version": framework + " 1.0",
            "train_s": train_s, "train_sd": 0.01, "fwd_s": fwd_s, "fwd_sd": 0.0, "first_step_s": 1.5,
            "loss0": loss0, "loss_last": 2.0, "peak_rss_mb": 300.0, "delta_rss_mb": 50.0,
            "fwd_flops": 4e9, "train_flops": 12e9}


def _report_with(rows):
    gemm = {"status": "ok", "numpy": "2", "ceiling_gflops": 100.0,
            "gemm": [{"shape": "square 8", "m": 8, "k": 8, "n": 8, "sec": 1e-6, "gflops": 100.0}]}
    return {"machine": "test", "threads": 2, "batch_size": 128, "steps": 10, "warmup": 3, "gemm": gemm, "rows": rows}


def test_table_ratios_ceiling_and_missing_frameworks():
    rows = [_row("tinybn-numpy", "bn", 0.4, 0.3), _row("tf", "bn", 0.2, 0.1),
            {"framework": "torch", "model": "bn", "status": "not installed", "reason": "No module named 'torch'"},
            {"framework": "tinybn-numba", "model": "bn", "status": "unavailable", "reason": "no kernels"}]
    text = _report.format_table(_report_with(rows), markdown=True)
    ours = next(line for line in text.splitlines() if line.startswith("| tinybn-numpy"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[4:8] == ["2.00x", "3.00x", "30.0 (30%)", "13.3 (13%)"]   # 12e9/0.4 s = 30 GFLOP/s of 100
    assert "| torch | bn | not installed |" in text and "No module named 'torch'" in text
    assert "| tinybn-numba | bn | unavailable |" in text
    assert _report.check_losses(_report_with(rows)) == []
    rows[1]["loss0"] = 2.4
    assert "the networks differ" in _report.check_losses(_report_with(rows))[0]


def test_missing_framework_is_a_row_not_a_crash(monkeypatch):
    import _peers

    def absent(threads):
        raise ImportError("No module named 'torch'")
    monkeypatch.setitem(_peers.PREPARE, "torch", absent)
    args = bench.parse_args(["--worker", "torch", "--model", "bn", "--batch-size", "2"])
    assert bench.run_worker(args) == {"status": "not installed", "reason": "No module named 'torch'"}


def test_rounds_pool_their_timed_steps_and_a_failed_round_fails_the_row():
    def run(train, fwd, peak):
        return {"status": "ok", "train_times": train, "fwd_times": fwd, "peak_rss_mb": peak,
                "delta_rss_mb": peak - 50, "loss0": 2.3, "loss_last": 2.0, "first_step_s": 1.0}
    merged = bench.merge_rounds([run([1.0, 3.0], [0.5], 200), run([2.0, 2.0], [1.5], 300)])
    assert (merged["train_s"], merged["fwd_s"], merged["peak_rss_mb"], merged["rounds"]) == (2.0, 1.0, 300, 2)
    assert merged["train_sd"] == pytest.approx((2 / 3) ** 0.5)            # sample stddev of 1, 3, 2, 2
    broken = {"status": "error", "reason": "exit code 1: boom"}
    assert bench.merge_rounds([run([1.0], [1.0], 1), broken]) == broken


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--frameworks", "tinybn-numpy,jax"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])


def test_tiny_run_tinybn_numpy(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--frameworks", "tinybn-numpy", "--models", "tutorial,bn",
                           "--batch-size", "4", "--steps", "2", "--warmup", "1", "--rounds", "2", "--gemm-square", "64",
                           "--markdown", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(r["framework"], r["model"], r["status"]) for r in report["rows"]] == \
        [("tinybn-numpy", "tutorial", "ok"), ("tinybn-numpy", "bn", "ok")]
    assert "| tinybn-numpy | tutorial |" in proc.stdout and "WARNING" not in proc.stdout
    gemm = report["gemm"]
    assert gemm["status"] == "ok" and gemm["ceiling_gflops"] == max(g["gflops"] for g in gemm["gemm"])
    for g in gemm["gemm"]:
        assert g["gflops"] == pytest.approx(2 * g["m"] * g["k"] * g["n"] / g["sec"] / 1e9)

    # the worker's first-step loss is the model's loss on its batch, computed here independently
    from tinybn.tensor import Tensor
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((4, 24, 24, 3), dtype=np.float32)
    labels = rng.integers(0, 10, 4).astype(np.int32)
    for r in report["rows"]:
        assert r["train_s"] > 0 and r["fwd_s"] > 0 and r["first_step_s"] > 0 and r["first_proc_s"] > 0
        assert r["rounds"] == 2 and len(r["train_times"]) == len(r["fwd_times"]) == 4     # 2 rounds x 2 steps
        assert r["train_s"] == pytest.approx(sum(r["train_times"]) / 4)
        assert r["peak_rss_mb"] >= r["delta_rss_mb"] >= 0 and math.isfinite(r["loss_last"])
        assert (r["fwd_flops"], r["train_flops"]) == bench.model_flops(r["model"], 4)
        net = bench.initial_state(r["model"])[0]
        expected = float(net.loss(net(Tensor(x)), labels).item())
        assert r["loss0"] == pytest.approx(expected, rel=1e-6)

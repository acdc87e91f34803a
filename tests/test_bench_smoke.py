"""bench/bench_cifar.py: the FLOP count, the table, missing frameworks, a tiny real run of tinybn-numpy and peers."""
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
    """A row as run_model leaves it: one round of one step, so every ratio is that round's."""
    return {"framework": framework, "model": model, "status": "ok", "version": framework + " 1.0",
            "train_rounds": [[train_s]], "fwd_rounds": [[fwd_s]], "first_step_s": 1.5, "first_fwd_s": 0.5,
            "loss0": loss0, "loss_last": 2.0, "peak_rss_mb": 300.0, "delta_rss_mb": 50.0,
            "fwd_flops": 4e9, "train_flops": 12e9}


def _report_with(rows):
    gemm = {"status": "ok", "numpy": "2", "ceiling_gflops": 100.0,
            "gemm": [{"shape": "square 8", "m": 8, "k": 8, "n": 8, "sec": 1e-6, "gflops": 100.0}]}
    bench.compare(rows, bench.KINDS, reference="tf", peers=bench.PEERS)
    return {"machine": "test", "threads": 2, "batch_size": 128, "steps": 1, "block": 1, "warmup": 3, "rounds": 1,
            "gemm": gemm, "rows": rows, "targets": bench.TARGETS}


def _cells(text, framework, model="bn"):
    line = next(line for line in text.splitlines() if line.startswith(f"| {framework} | {model} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_ratios_ceiling_compile_and_missing_frameworks():
    rows = [_row("tinybn-numpy", "bn", 0.4, 0.3), _row("tf", "bn", 0.2, 0.1), _row("torch-compile", "bn", 0.16, 0.15),
            {"framework": "torch", "model": "bn", "status": "not installed", "reason": "No module named 'torch'"},
            {"framework": "tinybn-numba", "model": "bn", "status": "unavailable", "reason": "no kernels"}]
    text = _report.format_table(_report_with(rows), markdown=True)
    ours = _cells(text, "tinybn-numpy")
    # ×TF 0.4/0.2, 0.3/0.1; ×best peer: torch-compile in training (0.4/0.16), TF in the forward pass
    assert ours[2:10] == ["400.0 ± 0.0", "300.0 ± 0.0", "2.00x (2.00-2.00)", "3.00x (3.00-3.00)",
                          "2.50x (2.50-2.50)", "3.00x (3.00-3.00)", "30.0 (30%)", "13.3 (13%)"]  # 12e9/0.4 s of 100
    assert ours[11] == "" and _cells(text, "torch-compile")[11] == "1.3 + 0.3"   # 1.5 - 0.16, 0.5 - 0.15
    assert "| torch | bn | not installed |" in text and "No module named 'torch'" in text
    assert "| tinybn-numba | bn | unavailable |" in text
    assert "Verdict: bn: tinybn-numba unavailable: no verdict." in text
    assert _report.check_losses(_report_with(rows)) == []
    rows[1]["loss0"] = 2.4
    assert "the networks differ" in _report.check_losses(_report_with(rows))[0]


def test_missing_framework_is_a_row_not_a_crash(monkeypatch):
    import _peers

    def absent(threads):
        raise ImportError("No module named 'torch'")
    monkeypatch.setitem(_peers.PREPARE, "torch-compile", absent)
    args = bench.parse_args(["--worker", "torch-compile", "--model", "bn", "--batch-size", "2"])
    assert bench.build_worker(args) == {"status": "not installed", "reason": "No module named 'torch'"}


def test_bad_arguments_are_refused():
    for argv in (["--frameworks", "tinybn-numpy,jax"], ["--steps", "0"], ["--block", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    assert bench.parse_args([]).rounds >= 5


def test_tiny_run_tinybn_numpy_and_peers(tmp_path):
    """bn at batch 8, one round of 2 steps in blocks of 1: tinybn-numpy, TF and (when installed) PyTorch eager
    (the compiled peers take too long to compile for a test)."""
    frameworks = ["tinybn-numpy", "tf"] + (["torch"] if importlib.util.find_spec("torch") else [])
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--frameworks", ",".join(frameworks), "--models", "bn",
                           "--batch-size", "8", "--steps", "2", "--block", "1", "--warmup", "1", "--rounds", "1",
                           "--gemm-square", "64", "--markdown", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(r["framework"], r["model"], r["status"]) for r in report["rows"]] == \
        [(fw, "bn", "ok") for fw in frameworks]
    assert "WARNING" not in proc.stdout          # every framework's first-step loss agrees
    gemm = report["gemm"]
    assert gemm["status"] == "ok" and gemm["ceiling_gflops"] == max(g["gflops"] for g in gemm["gemm"])
    for g in gemm["gemm"]:
        assert g["gflops"] == pytest.approx(2 * g["m"] * g["k"] * g["n"] / g["sec"] / 1e9)

    # the worker's first-step loss is the model's loss on its batch, computed here independently
    from tinybn.tensor import Tensor
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((8, 24, 24, 3), dtype=np.float32)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    rows = {(r["framework"], r["model"]): r for r in report["rows"]}
    for (fw, model), r in rows.items():
        tf = rows[("tf", model)]
        assert [len(ts) for ts in r["train_rounds"]] == [len(ts) for ts in r["fwd_rounds"]] == [2]
        assert r["train_s"] == pytest.approx(sum(r["train_rounds"][0]) / 2)
        for kind in ("train", "fwd"):
            assert r[f"{kind}_vs_tf"]["median"] == pytest.approx(r[f"{kind}_s"] / tf[f"{kind}_s"])
            best = min(rows[(p, model)][f"{kind}_s"] for p in frameworks if p in bench.PEERS)
            assert r[f"{kind}_vs_best"]["median"] == pytest.approx(r[f"{kind}_s"] / best)
        cells = _cells(proc.stdout, fw, model)
        assert cells[4] == _report.ratio_cell(r["train_vs_tf"]) and cells[6] == _report.ratio_cell(r["train_vs_best"])
        assert r["peak_rss_mb"] >= r["delta_rss_mb"] >= 0 and math.isfinite(r["loss_last"])
        assert (r["fwd_flops"], r["train_flops"]) == bench.model_flops(model, 8)
        if fw == "tinybn-numpy":
            assert r["first_step_s"] > 0 and r["first_proc_s"] > 0
            net = bench.initial_state(model)[0]
            expected = float(net.loss(net(Tensor(x)), labels).item())
            assert r["loss0"] == pytest.approx(expected, rel=1e-6)
    assert "Verdict: bn: tinybn-numba not run: no verdict." in proc.stdout

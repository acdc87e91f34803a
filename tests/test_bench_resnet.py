"""python -m tinybn.bench resnet and bench/bench_resnet.py: output, FLOP count, protocol, bad arguments."""
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from tinybn.bench import build_parser
from tinybn.tasks.resnet import conv_flops, time_run
from tinybn.models.resnet_v2 import Block, Bottleneck, ResNetV2, resnet_v2_50

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_resnet.py")
NUMBER = r"(\d+\.\d+)"


def test_conv_flops_closed_form():
    """One block of one unit (64 -> 8 channels, bottleneck 2, stride 2) on 16x16, 5 classes, batch 3."""
    model = ResNetV2([Block("block1", Bottleneck, [(8, 2, 2)])], num_classes=5, rng=np.random.default_rng(0))
    n = 3
    root = 2 * n * 8 * 8 * 7 * 7 * 3 * 64          # conv2d_same 7x7/2: 16 -> 8; max pool 3x3/2 SAME: 8 -> 4
    shortcut = 2 * n * 2 * 2 * 1 * 1 * 64 * 8      # 1x1/2 of preact: 4 -> 2
    conv1 = 2 * n * 4 * 4 * 1 * 1 * 64 * 2
    conv2 = 2 * n * 2 * 2 * 3 * 3 * 2 * 2          # conv2d_same 3x3/2: 4 -> 2
    conv3 = 2 * n * 2 * 2 * 1 * 1 * 2 * 8
    logits = 2 * n * 1 * 1 * 1 * 1 * 8 * 5         # after the global pool
    forward = root + shortcut + conv1 + conv2 + conv3 + logits
    assert conv_flops(model, n, 16, 16) == (forward, 3 * forward - root)
    assert forward == 3_638_736


def test_time_run_protocol():
    calls, lines = [], []
    mean, sd, durations = time_run(lambda: calls.append(1), "Forward", 12, burn_in=3, log=lines.append)
    assert len(calls) == 15 and len(durations) == 12
    assert [int(re.search(r": step (\d+), duration = \d+\.\d{3}$", ln).group(1)) for ln in lines[:-1]] == [0, 10]
    assert re.search(r": Forward across 12 steps, \d+\.\d{3} \+/- \d+\.\d{3} sec / batch$", lines[-1])
    assert mean == statistics.fmean(durations) and sd == statistics.pstdev(durations)   # TF's sd: population


def test_cli_tiny_run():
    proc = subprocess.run([sys.executable, "-m", "tinybn.bench", "resnet", "--image-size", "64", "--batch-size", "2",
                           "--num-batches", "2", "--burn-in", "1", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("resnet_v2_50: batch 2, 64x64x3 float32, 1000 classes, backend numpy")
    fwd_flops, fb_flops = conv_flops(resnet_v2_50(1000, rng=np.random.default_rng(0)), 2, 64, 64)
    assert out[1] == f"conv FLOPs per batch: forward {fwd_flops / 1e9:.2f} GFLOP, " \
                     f"forward-backward {fb_flops / 1e9:.2f} GFLOP"
    assert len([ln for ln in out if re.search(r"^\S+ \S+: step 0, duration = \d+\.\d{3}$", ln)]) == 2
    for info, flops in (("Forward", fwd_flops), ("Forward-backward", fb_flops)):
        total = next(re.search(rf": {info} across 2 steps, {NUMBER} \+/- {NUMBER} sec / batch$", ln)
                     for ln in out if f": {info} across" in ln)
        mean = float(total.group(1))
        rate = float(next(re.fullmatch(rf"{info}: {NUMBER} GFLOP/s", ln) for ln in out
                          if ln.startswith(f"{info}: ")).group(1))
        assert rate == pytest.approx(flops / mean / 1e9, rel=0.05)        # the mean is printed to 1 ms
    peak = re.fullmatch(r"Peak memory \(ru_maxrss\): (\d+) MB", out[-1])
    assert peak and 50 < int(peak.group(1)) < 4000


def test_bad_arguments():
    parser = build_parser()
    for argv in (["resnet", "--depth", "34"], ["resnet", "--num-batches", "0"], ["resnet", "--burn-in", "-1"],
                 ["resnet", "--backend", "jax"], ["resnet", "--mode", "backward"], []):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert parser.parse_args(["resnet"]).depth == 50


def _load_bench_resnet():
    spec = importlib.util.spec_from_file_location("bench_resnet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_resnet_table_and_a_tiny_run_against_the_peers(tmp_path):
    """tinybn-numpy, TF and (when installed) PyTorch eager, 2 rounds of 1 step; batch 1 at 32x32 for TF
    alone, but PyTorch refuses batch norm on one value per channel, so with it batch 2 at 64x64."""
    bench = _load_bench_resnet()
    torch = importlib.util.find_spec("torch") is not None
    frameworks = ["tinybn-numpy", "tf"] + (["torch"] if torch else [])
    size, batch = ("64", "2") if torch else ("32", "1")
    out = tmp_path / "resnet.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--frameworks", ",".join(frameworks), "--image-size", size,
                           "--batch-size", batch, "--num-batches", "2", "--rounds", "2", "--burn-in", "0",
                           "--markdown", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["framework"]: r for r in report["rows"]}
    for fw in frameworks:
        assert rows[fw]["status"] == "ok", rows[fw]
        # the same weights and batch: the first training-mode losses agree (else bench prints a WARNING)
        assert rows[fw]["loss0"] == pytest.approx(rows["tf"]["loss0"], rel=1e-4)
        assert [len(ts) for ts in rows[fw]["fb_rounds"]] == [1, 1]
    assert "WARNING" not in proc.stdout and "| tinybn-numpy | " in proc.stdout
    assert (rows["tf"]["fwd_flops"], rows["tf"]["fb_flops"]) == \
        conv_flops(resnet_v2_50(1000, rng=np.random.default_rng(0)), int(batch), int(size), int(size))
    ours = next(row for row in bench.table_rows(report) if row[0] == "tinybn-numpy")
    per_round = [a[0] / b[0] for a, b in zip(rows["tinybn-numpy"]["fwd_rounds"], rows["tf"]["fwd_rounds"])]
    assert ours[2] == f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"
    report["rows"].append({"framework": "tinybn-numba", "status": "unavailable", "reason": "no numba"})
    text = bench.format_table(report, markdown=True)
    assert "| tinybn-numba | unavailable |" in text and "- tinybn-numba: unavailable: no numba" in text
    assert "Verdict: tinybn-numba or tf not in this run: no verdict." in text

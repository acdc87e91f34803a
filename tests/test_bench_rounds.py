"""bench/_rounds.py and the verdict of bench/_report.py: per-round ratios, their median, min and max,
the fastest peer of each round, the turns of interleave(), and the worker protocol over real pipes."""
import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import _report  # noqa: E402
import _rounds  # noqa: E402

PEERS = ("tf", "tf-xla", "torch", "torch-compile")


def _row(framework, train_rounds, fwd_rounds):
    return {"framework": framework, "model": "bn", "status": "ok", "train_rounds": train_rounds,
            "fwd_rounds": fwd_rounds}


def _synthetic():
    """Three rounds; the machine is twice as slow in round 2 for everyone. torch-compile is the
    fastest peer in rounds 1 and 2, tf in round 3."""
    return [_row("tinybn-numba", [[0.6, 0.8], [1.5, 1.3], [0.7, 0.7]], [[0.1], [0.2], [0.1]]),
            _row("tf", [[1.0, 1.0], [2.0, 2.0], [0.8, 0.8]], [[0.1], [0.25], [0.12]]),
            _row("torch", [[1.2, 1.2], [2.2, 2.6], [1.0, 1.0]], [[0.2], [0.3], [0.2]]),
            _row("torch-compile", [[0.9, 0.9], [1.6, 1.6], [0.9, 0.9]], [[0.09], [0.3], [0.2]]),
            {"framework": "tf-xla", "model": "bn", "status": "error", "reason": "boom"}]


def test_compare_medians_min_max_and_the_fastest_peer_of_each_round():
    rows = {r["framework"]: r for r in _rounds.compare(_synthetic(), ("train", "fwd"), "tf", PEERS)}
    ours = rows["tinybn-numba"]
    # round means: ours 0.7, 1.4, 0.7; tf 1.0, 2.0, 0.8; torch-compile 0.9, 1.6, 0.9
    assert ours["train_vs_tf"]["rounds"] == pytest.approx([0.7, 0.7, 0.875])
    assert (ours["train_vs_tf"]["median"], ours["train_vs_tf"]["min"], ours["train_vs_tf"]["max"]) == \
        pytest.approx((0.7, 0.7, 0.875))
    assert ours["train_best"] == ["torch-compile", "torch-compile", "tf"]
    assert ours["train_vs_best"]["rounds"] == pytest.approx([0.7 / 0.9, 1.4 / 1.6, 0.7 / 0.8])
    assert ours["train_vs_best"]["median"] == pytest.approx(0.875)
    assert ours["train_s"] == pytest.approx(0.7) and ours["train_sd"] == pytest.approx(
        statistics.stdev([0.6, 0.8, 1.5, 1.3, 0.7, 0.7]))
    # forward: fastest peer torch-compile, tf, tf; tf's own ratio to itself is 1 every round
    assert ours["fwd_best"] == ["torch-compile", "tf", "tf"]
    assert ours["fwd_vs_best"]["rounds"] == pytest.approx([0.1 / 0.09, 0.2 / 0.25, 1 / 1.2])
    assert rows["tf"]["fwd_vs_tf"]["rounds"] == [1.0, 1.0, 1.0]
    assert (rows["torch"]["train_vs_best"]["min"], rows["torch"]["train_vs_best"]["max"]) == \
        pytest.approx((1.0 / 0.8, 2.4 / 1.6))
    assert "train_s" not in rows["tf-xla"]                    # a failed row takes no part


def test_compare_without_the_reference_or_any_peer():
    rows = _rounds.compare([_row("tinybn-numpy", [[1.0]], [[1.0]])], ("train", "fwd"), "tf", PEERS)
    assert "train_vs_tf" not in rows[0] and "train_vs_best" not in rows[0] and rows[0]["train_s"] == 1.0
    assert _report.ratio_cell(rows[0].get("train_vs_tf")) == "n/a"


def _verdict_report(train_ratio_round_means):
    rows = [_row("tinybn-numba", [[t] for t in train_ratio_round_means], [[0.9], [1.1], [0.95]]),
            _row("tf", [[1.0]] * 3, [[1.0]] * 3)]
    rows = _rounds.compare(rows, ("train", "fwd"), "tf", PEERS)
    return {"rows": rows, "targets": {"train": ("best peer", 0.75), "fwd": ("tf", 1.0)}}


def test_verdict_from_the_medians():
    met, = _report.verdicts(_verdict_report([0.7, 0.9, 0.74]))        # median 0.74; fwd median 0.95
    assert met == ("bn, tinybn-numba: train 0.74x the fastest peer (min 0.70, max 0.90; fastest peer by round: "
                   "tf 3), target <= 0.75x: MET; fwd 0.95x TF (min 0.90, max 1.10), target <= 1.00x: MET.")
    missed, = _report.verdicts(_verdict_report([0.7, 0.9, 0.76]))
    assert "train 0.76x the fastest peer" in missed and "target <= 0.75x: NOT MET" in missed
    assert _report.verdicts({"rows": [dict(_row("tinybn-numba", [], []), status="unavailable")],
                             "targets": {}}) == ["bn: tinybn-numba unavailable: no verdict."]


class FakeWorker:
    def __init__(self, name, log, fail_at=None):
        self.name, self.log, self.fail_at, self.alive, self.calls = name, log, fail_at, True, 0

    def request(self, command):
        self.calls += 1
        self.log.append((self.name, command["run"], command["steps"]))
        if self.calls == self.fail_at:
            self.alive = False
            return {"status": "error", "reason": "boom"}
        return {"status": "ok", "times": [float(self.calls)] * command["steps"], "last": 1.0}


def test_interleave_takes_turns_in_blocks_and_rotates_the_order():
    log = []
    workers = [FakeWorker("a", log), FakeWorker("b", log), FakeWorker("c", log, fail_at=3)]
    times, failures = _rounds.interleave(workers, ("train", "fwd"), rounds=2, steps=3, block=2, pause=0)
    # per round and kind: blocks of 2 then 1; each block starts one worker further on
    assert log[:6] == [("a", "train", 2), ("b", "train", 2), ("c", "train", 2),
                       ("b", "train", 1), ("c", "train", 1), ("a", "train", 1)]
    assert log[6:8] == [("c", "fwd", 2), ("a", "fwd", 2)]           # c fails on its 3rd block, then sits out
    assert failures == {"c": {"status": "error", "reason": "boom"}}
    assert all(name != "c" for name, _, _ in log[8:])
    assert times["a"]["train"] == [[1.0, 1.0, 2.0], [5.0, 5.0, 6.0]] and len(times["a"]["fwd"]) == 2
    assert [len(ts) for ts in times["b"]["fwd"]] == [3, 3]


SERVER = """
import sys, time
sys.path.insert(0, {bench!r})
import _rounds
mode = sys.argv[1]
if mode == "crash":
    raise SystemExit("error: no such model")
if mode == "hang":
    time.sleep(30)
def fail():
    raise RuntimeError("out of memory")
_rounds.serve({{"status": "ok", "version": "fake 1"}}, {{"train": lambda: 2.5, "fail": fail}},
              lambda: {{"status": "ok", "peak_rss_mb": 1.0}})
"""


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "server.py"
    path.write_text(SERVER.format(bench=os.path.join(ROOT, "bench")))
    return lambda mode, timeout=30: _rounds.Worker(mode, [sys.executable, str(path), mode], None, timeout)


def test_worker_protocol_over_pipes(server):
    w = server("ok")
    assert w.hello == {"status": "ok", "version": "fake 1"} and w.alive
    reply = w.request({"run": "train", "steps": 3})
    assert reply["status"] == "ok" and len(reply["times"]) == 3 and reply["last"] == 2.5
    assert w.close() == {"status": "ok", "peak_rss_mb": 1.0}

    w = server("ok")
    assert w.request({"run": "fail", "steps": 1}) == {"status": "error", "reason": "RuntimeError: out of memory"}
    assert not w.alive and w.close() == {"status": "error", "reason": "the worker had already stopped"}


def test_worker_that_crashes_or_hangs(server):
    crashed = server("crash")
    assert crashed.hello == {"status": "error", "reason": "exit code 1: error: no such model"}
    assert not crashed.alive
    hung = server("hang", timeout=1)
    assert hung.hello == {"status": "timeout", "reason": "no reply within 1 s"} and not hung.alive

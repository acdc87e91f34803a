"""Interleaved timing for the bench scripts: one long-lived worker per framework, blocks in turn.

This machine's speed drifts by up to 2x between minutes, more than the margins the
benchmarks have to decide. So each framework lives in one worker process for the whole
run, and the parent asks the workers in turn for a short block of steps: a slow spell
lands on every framework alike. A round is `steps` timed steps of every framework (in
blocks of `block`, the order of the workers rotating from block to block so that none
always follows the same neighbour); the verdict is the median over the rounds of each
round's ratio, with its min and max, never a ratio of pooled means.

Parent side:
    Worker(name, cmd, env, timeout)   a worker process; .hello (its first reply),
                                      .request(command) -> reply, .close() -> last reply
    interleave(workers, kinds, rounds, steps, block, log)
                                      {name: {kind: [[seconds of each step] per round]}}
Worker side:
    serve(hello, steps)               reply `hello`, then run {kind: step()} blocks on request
Statistics (on those per-round lists):
    round_means(rounds)               the mean step of each round
    spread(values)                    {"median", "min", "max", "rounds"}
    ratios(means, reference)          per round, means[i] / reference[i]
    fastest_per_round(means_by_name)  per round, (name, mean) of the fastest
    compare(rows, kinds, reference, peers)   all of it, into the table's rows

The messages are one JSON object per line, prefixed by MARK on the worker's stdout
(anything else a framework prints there is skipped); commands come on its stdin.
"""
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MARK = "BENCH_JSON "


def emit(message):
    print(MARK + json.dumps(message), flush=True)


# ---- worker side ------------------------------------------------------------------------------

def serve(hello, steps, final=lambda: {}):
    """Reply `hello`, then answer {"run": kind, "steps": n} with {"times": [...], "last": value} and
    {"close": true} with final() (memory, last loss); stop at end of input."""
    emit(hello)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("close"):
            emit(final())
            return
        step, times, value = steps[command["run"]], [], None
        try:
            for _ in range(command["steps"]):
                t = time.perf_counter()
                value = step()
                times.append(time.perf_counter() - t)
        except Exception as e:                       # a broken framework is a row, not a crash
            emit({"status": "error", "reason": f"{type(e).__name__}: {e}"})
            return
        emit({"status": "ok", "times": times, "last": value if isinstance(value, float) else None})


# ---- parent side ------------------------------------------------------------------------------

class Worker:
    """One worker process. Its stderr goes to a temporary file (a full pipe would stall it), whose
    last line explains a crash; each reply must come within `timeout` seconds."""

    def __init__(self, name, cmd, env, timeout):
        self.name, self.timeout = name, timeout
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1)
        self._replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._reply()
        self.alive = self.hello.get("status") == "ok"
        if not self.alive:
            self._stop()

    def _read(self):
        for line in self._proc.stdout:
            if line.startswith(MARK):
                self._replies.put(json.loads(line[len(MARK):]))
        self._replies.put(None)                          # end of output: the process is gone

    def _reply(self):
        try:
            reply = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            self._stop()
            return {"status": "timeout", "reason": f"no reply within {self.timeout:g} s"}
        if reply is None:
            code = self._proc.wait()
            self._stderr.seek(0)
            tail = (self._stderr.read().strip().splitlines() or ["(no output)"])[-1]
            return {"status": "error", "reason": f"exit code {code}: {tail}"}
        return reply

    def request(self, command):
        """Send one command, wait for its reply; a failed reply leaves the worker dead."""
        try:
            self._proc.stdin.write(json.dumps(command) + "\n")
            self._proc.stdin.flush()
        except OSError:
            pass                                         # the reply (None) says why
        reply = self._reply()
        if reply.get("status", "ok") != "ok":
            self.alive = False
            self._stop()
        return reply

    def close(self):
        """Ask the worker for its last reply and let it exit; {"status": "error", ...} if it cannot."""
        if not self.alive:
            return {"status": "error", "reason": "the worker had already stopped"}
        reply = self.request({"close": True})
        self.alive = False
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._stop()
        return reply

    def _stop(self):
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def interleave(workers, kinds, rounds, steps, block, log=lambda s: None, pause=0.05):
    """Every live worker runs `steps` steps of each kind per round, in blocks of `block`, in turns.

    Returns ({name: {kind: [[step seconds] for each round]}}, {name: failed reply}). A worker that
    fails stops taking part; the others go on. `pause` lets the previous worker's threads go idle.
    """
    times = {w.name: {k: [[] for _ in range(rounds)] for k in kinds} for w in workers}
    failures = {}
    blocks = [min(block, steps - start) for start in range(0, steps, block)]
    turn = 0
    for r in range(rounds):
        log(f"round {r + 1} of {rounds}: {', '.join(kinds)}, {steps} steps each in blocks of {block}")
        for kind in kinds:
            for n in blocks:
                order = workers[turn % len(workers):] + workers[:turn % len(workers)]
                turn += 1
                for w in order:
                    if not w.alive:
                        continue
                    time.sleep(pause)
                    reply = w.request({"run": kind, "steps": n})
                    if reply.get("status") != "ok":
                        failures[w.name] = reply
                        continue
                    times[w.name][kind][r] += reply["times"]
                    if reply.get("last") is not None:        # the training step's loss
                        w.last = reply["last"]
    return times, failures


# ---- statistics -------------------------------------------------------------------------------

def round_means(rounds):
    return [statistics.fmean(ts) for ts in rounds]


def spread(values):
    """The median of per-round values, with min, max and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": list(values)}


def ratios(means, reference):
    return [m / ref for m, ref in zip(means, reference)]


def fastest_per_round(means_by_name):
    """[(name, mean)] of the fastest of `means_by_name` ({name: per-round means}) in each round."""
    names = list(means_by_name)
    if not names:
        return []
    count = len(means_by_name[names[0]])
    return [min(((n, means_by_name[n][r]) for n in names), key=lambda nm: nm[1]) for r in range(count)]


def compare(rows, kinds, reference, peers):
    """Add to every ok row with per-round times ({kind}_rounds), for each kind: {kind}_s (the median
    of its round means), {kind}_sd (stddev of all its steps), {kind}_vs_{reference} (the spread of the
    per-round ratios to the reference row) and {kind}_vs_best (to the fastest of the ok `peers` rows
    in each round, named round by round in {kind}_best)."""
    ok = {r["framework"]: r for r in rows if r.get("status") == "ok" and f"{kinds[0]}_rounds" in r}
    for kind in kinds:
        means = {name: round_means(r[f"{kind}_rounds"]) for name, r in ok.items()}
        best = fastest_per_round({n: m for n, m in means.items() if n in peers})
        for name, r in ok.items():
            steps = [t for ts in r[f"{kind}_rounds"] for t in ts]
            r[f"{kind}_s"] = statistics.median(means[name])
            r[f"{kind}_sd"] = statistics.stdev(steps) if len(steps) > 1 else 0.0
            if reference in means:
                r[f"{kind}_vs_{reference}"] = spread(ratios(means[name], means[reference]))
            if best:
                r[f"{kind}_vs_best"] = spread(ratios(means[name], [t for _, t in best]))
                r[f"{kind}_best"] = [n for n, _ in best]
    return rows

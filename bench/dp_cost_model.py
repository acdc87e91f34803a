"""Synchronous data parallelism on paper: a ring allreduce of the gradients, overlapped with backward.

One node holds one replica and computes on its own batch (weak scaling: the per-node batch
stays fixed as nodes are added, as the tutorial's towers and tinybn's --batch-size do).

    P               the model's parameters; G = 4 P gradient bytes per step (float32)
    F, B, U         one node's forward (+ loss), backward and update seconds, measured
    G_last          bytes of the last bucket to be reduced: GradientBuckets fills buckets in
                    reverse parameter order, so the last one holds the first layers' gradients,
                    which exist only when backward ends
    W               the link bandwidth of every node, bytes/s (10 Gb/s = 1.25e9 B/s)

Ring allreduce (reduce-scatter then allgather; Horovod's and NCCL's algorithm for large
buffers): each of the K nodes sends, and receives, 2 (K - 1) / K * n bytes, so

    A(n, K) = 2 (K - 1) / K * n / W        A(n, 1) = 0

The latency term (2 (K - 1) messages of a few microseconds each, per bucket) is left out: with
buckets of 2 MiB or more it is under a few percent of A at these bandwidths.

Overlap model. Every bucket but the last is summed while backward still runs, and nothing
else slows down; the last bucket starts when backward ends and cannot be hidden:

    step(K)       = F + max(B, A(G - G_last, K)) + A(G_last, K) + U
    efficiency(K) = step(1) / step(K),   step(1) = F + B + U

so K nodes process K * batch images in step(K) where one node would need K * step(1).
Optimistic where a bucket is ready late in backward (the model lets its sum start when
backward starts), and where the communication takes CPU cycles from the computation (it
assumes a network card and a progress engine that cost the node nothing); the measured 2-rank
point of bench_data_parallel.py, on one 2-core machine, shows both effects.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))      # _report sits beside this file
from _report import _render  # noqa: E402

GBPS = (10, 25, 100)
NODES = (2, 4, 8, 16, 32, 64)
FLOAT32_BYTES = 4


def bytes_per_second(gbps):
    """A link of `gbps` gigabits per second, in bytes per second."""
    return gbps * 1e9 / 8


def ring_allreduce_seconds(nbytes, nodes, bandwidth):
    """A(n, K): seconds to sum `nbytes` over `nodes` by ring allreduce at `bandwidth` bytes/s."""
    if nodes < 1:
        raise ValueError(f"ring_allreduce_seconds: nodes must be >= 1, got {nodes}")
    return 2.0 * (nodes - 1) / nodes * nbytes / bandwidth


def bus_bandwidth(nbytes, nodes, seconds):
    """The bandwidth that ring_allreduce_seconds would need to take `seconds` (NCCL's "bus
    bandwidth"): how a measured allreduce time is turned into W."""
    return 2.0 * (nodes - 1) / nodes * nbytes / seconds


def step_seconds(node, nodes, bandwidth):
    """step(K) of the overlap model for `node` = {"forward", "backward", "update" (seconds),
    "gradient_bytes" (G), "last_bucket_bytes" (G_last)}."""
    hidden = ring_allreduce_seconds(node["gradient_bytes"] - node["last_bucket_bytes"], nodes, bandwidth)
    last = ring_allreduce_seconds(node["last_bucket_bytes"], nodes, bandwidth)
    return node["forward"] + max(node["backward"], hidden) + last + node["update"]


def efficiency(node, nodes, bandwidth):
    """step(1) / step(K): the fraction of K times one node's throughput that K nodes reach."""
    return step_seconds(node, 1, bandwidth) / step_seconds(node, nodes, bandwidth)


def count_parameters(model):
    """P: the elements of every trainable parameter of `model`."""
    return sum(int(p.size) for _, p in model.named_parameters())


class _NoCommunicator:
    size = 1

    def sum_(self, flat):
        pass


def bucket_bytes(model, bucket_bytes=None):
    """[gradient bytes of each bucket], in the order they are reduced: GradientBuckets' own layout
    of `model`'s parameters (its default bucket size unless `bucket_bytes` is given)."""
    from tinybn.distributed.buckets import GradientBuckets
    extra = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    buckets = GradientBuckets(list(model.named_parameters()), _NoCommunicator(), overlap=False, **extra)
    try:
        return [sum(int(p.data.nbytes) for p in b.params) for b in buckets.buckets]
    finally:
        buckets.close()


def node_figures(name, params, last_bucket_bytes, phases, batch, how):
    """One row of the cost model: a model's sizes and one node's measured phase seconds."""
    return {"model": name, "params": int(params), "gradient_bytes": FLOAT32_BYTES * int(params),
            "last_bucket_bytes": int(last_bucket_bytes), "forward": phases["forward"],
            "backward": phases["backward"], "update": phases["update"], "batch": batch, "how": how}


def projection(nodes_rows, gbps=GBPS, nodes=NODES):
    """[{model, gbps, and by K: allreduce_s A(G, K), step_s, efficiency, hiding_backward_s
    A(G - G_last, K)}] for every node row and link."""
    rows = []
    for node in nodes_rows:
        hidden = node["gradient_bytes"] - node["last_bucket_bytes"]
        for g in gbps:
            w = bytes_per_second(g)
            rows.append({"model": node["model"], "gbps": g,
                         "allreduce_s": {k: ring_allreduce_seconds(node["gradient_bytes"], k, w) for k in nodes},
                         "step_s": {k: step_seconds(node, k, w) for k in nodes},
                         # the backward that covers all but the last bucket: a faster node waits
                         "hiding_backward_s": {k: ring_allreduce_seconds(hidden, k, w) for k in nodes},
                         "efficiency": {k: efficiency(node, k, w) for k in nodes}})
    return rows


def format_projection(nodes_rows, markdown=False, gbps=GBPS, nodes=NODES):
    """The cost model's two tables: what each node measured, then the projected efficiency."""
    lines = []
    head = ["model", "parameters", "MB / step", "last bucket MB", "batch / node", "forward s", "backward s",
            "update s", "measured how"]
    body = [[n["model"], f"{n['params']:,}", f"{n['gradient_bytes'] / 1e6:.1f}", f"{n['last_bucket_bytes'] / 1e6:.2f}",
             str(n["batch"]), f"{n['forward']:.4f}", f"{n['backward']:.4f}", f"{n['update']:.4f}", n["how"]]
            for n in nodes_rows]
    lines += [_render([head] + body, markdown), ""]
    k = nodes[-1]
    head = ["model", "link"] + [f"K={n}" for n in nodes] + [f"allreduce K={k}", f"hidden if backward >= (K={k})"]
    body = [[r["model"], f"{r['gbps']} Gb/s"] + [f"{100 * r['efficiency'][n]:.1f}%" for n in nodes]
            + [f"{1e3 * r['allreduce_s'][k]:.1f} ms", f"{1e3 * r['hiding_backward_s'][k]:.1f} ms"]
            for r in projection(nodes_rows, gbps, nodes)]
    lines.append(_render([head] + body, markdown))
    return "\n".join(lines)


# ---- the cost model's rows from a bench_data_parallel.py report ----------------------------------

def ok_runs(report, model, config):
    """The runs of `model` in `config` over the rounds; None when one failed."""
    runs = report["runs"][model][config]
    failed = [r for r in runs if r["status"] != "ok"]
    return None if failed or not runs else runs


def median_phases(runs):
    """{phase: its median over the runs} of forward, backward, update."""
    return {name: statistics.median(r["phases"][name] for r in runs) for name in ("forward", "backward", "update")}


def cost_nodes(report):
    """The cost model's one-node rows: (a)'s median phases per CIFAR model, resnet_v2_50's scaled."""
    nodes = []
    for model, sizes in report["models"].items():
        a = ok_runs(report, model, "1x2")
        if a:
            nodes.append(node_figures(model, sizes["params"], sizes["buckets"][-1], median_phases(a),
                                      report["batch_size"], f"(a), median of {len(a)} run(s)"))
    r = report.get("resnet")
    if r and r["status"] == "ok":
        scale = report["resnet_node_batch"] / r["batch"]
        phases = {name: t * scale for name, t in r["phases"].items()}
        how = f"timed at batch {r['batch']}, {r['image_size']}x{r['image_size']}, 2 threads, x {scale:g}"
        nodes.append(node_figures("resnet_v2_50", r["params"], r["buckets"][-1], phases,
                                  report["resnet_node_batch"], how))
    return nodes


def two_rank_rows(report):
    """(b) predicted from (c)'s phases and the measured MPI bandwidth, beside (b) measured: per
    round (the machine drifts between rounds), median [min-max] over the rounds."""
    head = ["model", "MPI bus bandwidth", "allreduce ms: A(G) / in sum_", "not hidden ms: predicted / waited",
            "efficiency vs (c): predicted / measured", "(b) measured / predicted"]
    body = []
    measured, k = report["allreduce"], report["ranks"]
    for model, sizes in report["models"].items():
        b, c = ok_runs(report, model, "2x1"), ok_runs(report, model, "1x1")
        if not (b and c and measured["status"] == "ok"):
            continue
        w = next(s["bus_bytes_per_s"] for s in measured["sizes"] if s["bytes"] == FLOAT32_BYTES * sizes["params"])
        nodes = [node_figures(model, sizes["params"], sizes["buckets"][-1], rc["phases"],
                              report["batch_size"] // k, "(c)") for rc in c]
        alone = [n["forward"] + n["backward"] + n["update"] for n in nodes]
        predicted = [step_seconds(n, k, w) for n in nodes]
        step_b = [statistics.fmean(r["step_times"]) for r in b]
        body.append([model, f"{w / 1e9:.2f} GB/s on {FLOAT32_BYTES * sizes['params'] / 1e6:.2f} MB",
                     f"{1e3 * ring_allreduce_seconds(FLOAT32_BYTES * sizes['params'], k, w):.1f} / "
                     f"{spread([1e3 * statistics.fmean(r['allreduce_s']) for r in b])}",
                     f"{spread([1e3 * (p - s) for p, s in zip(predicted, alone)])} / "
                     f"{spread([1e3 * statistics.fmean(r['wait_s']) for r in b])}",
                     f"{spread([s / p for p, s in zip(predicted, alone)], '{:.0%}')} / "
                     f"{spread([statistics.fmean(rc['step_times']) / s for rc, s in zip(c, step_b)], '{:.0%}')}",
                     spread([p / s for p, s in zip(predicted, step_b)], "{:.2f}x")])
    return [head] + body


def spread(xs, fmt="{:.1f}"):
    """"median [min-max]" of the rounds' values."""
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"

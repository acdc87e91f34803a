"""The table bench_cifar.py prints (plain text or markdown), the verdict on the targets and the checks."""
import math

LOSS_RTOL = 1e-3        # float32 first-step losses of the same network and weights
COMPILED = ("tf-xla", "torch-compile")


def _seconds(mean, sd):
    return f"{mean:.4f} ± {sd:.4f}"


def _ms(median, sd):
    return f"{1000 * median:.1f} ± {1000 * sd:.1f}"


def ratio_cell(spread):
    """'0.82x (0.78-0.90)': the median of the per-round ratios (min-max); 'n/a' without one."""
    if not spread:
        return "n/a"
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"


def table_rows(report):
    """[header, *rows] of strings, one row per (framework, model)."""
    ceiling = report["gemm"].get("ceiling_gflops") if report["gemm"].get("status") == "ok" else None
    header = ["framework", "model", "train ms/step", "fwd ms/step", "train ×TF", "fwd ×TF", "train ×best peer",
              "fwd ×best peer", "train GFLOP/s (% ceil)", "fwd GFLOP/s (% ceil)", "first step s", "compile s",
              "peak MB (Δ)"]
    out = [header]
    for r in report["rows"]:
        name = r["framework"]
        if r["status"] != "ok":
            out.append([name, r["model"], r["status"], "(see below)"] + [""] * (len(header) - 4))
            continue

        def rate(flops, seconds):
            g = flops / seconds / 1e9
            return f"{g:.1f} ({100 * g / ceiling:.0f}%)" if ceiling else f"{g:.1f}"

        first = f"{r['first_step_s']:.2f}"
        if "first_proc_s" in r:
            first += f" (proc {r['first_proc_s']:.1f})"
        compile_s = (f"{r['first_step_s'] - r['train_s']:.1f} + {r['first_fwd_s'] - r['fwd_s']:.1f}"
                     if name in COMPILED else "")
        out.append([name, r["model"], _ms(r["train_s"], r["train_sd"]), _ms(r["fwd_s"], r["fwd_sd"]),
                    ratio_cell(r.get("train_vs_tf")), ratio_cell(r.get("fwd_vs_tf")),
                    ratio_cell(r.get("train_vs_best")), ratio_cell(r.get("fwd_vs_best")),
                    rate(r["train_flops"], r["train_s"]), rate(r["fwd_flops"], r["fwd_s"]),
                    first, compile_s, f"{r['peak_rss_mb']:.0f} ({r['delta_rss_mb']:+.0f})"])
    return out


def _render(rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fastest_count(names):
    counts = {n: names.count(n) for n in dict.fromkeys(names)}
    return ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda nc: -nc[1]))


def verdicts(report, framework="tinybn-numba"):
    """One line per model: does `framework` meet each target ({kind: (against, at most)}) on the median
    of its per-round ratios in this run?"""
    lines = []
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        row = next((r for r in report["rows"] if r["model"] == model and r["framework"] == framework), None)
        if row is None or row["status"] != "ok":
            lines.append(f"{model}: {framework} {'not run' if row is None else row['status']}: no verdict.")
            continue
        parts = []
        for kind, (against, limit) in report["targets"].items():
            spread = row.get(f"{kind}_vs_best" if against == "best peer" else f"{kind}_vs_{against}")
            what = {"best peer": "the fastest peer", "tf": "TF"}.get(against, against)
            if spread is None:
                parts.append(f"{kind} vs {what}: n/a ({against} not in this run)")
                continue
            held = "MET" if spread["median"] <= limit else "NOT MET"
            fastest = f"; fastest peer by round: {_fastest_count(row[f'{kind}_best'])}" \
                if against == "best peer" else ""
            parts.append(f"{kind} {spread['median']:.2f}x {what} (min {spread['min']:.2f}, max {spread['max']:.2f}"
                         f"{fastest}), target <= {limit:.2f}x: {held}")
        lines.append(f"{model}, {framework}: " + "; ".join(parts) + ".")
    return lines


def format_table(report, markdown=False):
    """The whole report: settings, GEMM ceiling, the table, the verdict and what its columns mean."""
    gemm = report["gemm"]
    lines = [f"Machine: {report['machine']}",
             f"Batch {report['batch_size']}, {report['threads']} threads for every framework, one worker process "
             f"per framework and model, {report['warmup']} warm-up steps, then {report['rounds']} round(s) of "
             f"{report['steps']} timed steps of each kind per framework, in blocks of {report['block']} "
             f"taken in turns."]
    if gemm.get("status") == "ok":
        shapes = ", ".join(f"{g['shape']} ({g['m']}x{g['k']} @ {g['k']}x{g['n']}) {g['gflops']:.1f}"
                           for g in gemm["gemm"])
        lines.append(f"GEMM ceiling (numpy {gemm['numpy']} float32 matmul, best of repeats, GFLOP/s): "
                     f"{gemm['ceiling_gflops']:.1f}; by shape: {shapes}.")
    else:
        lines.append(f"GEMM ceiling: {gemm.get('status')} ({gemm.get('reason', '')})")
    versions = dict.fromkeys(r["version"] for r in report["rows"] if r.get("version"))
    if versions:
        lines.append("Versions: " + ", ".join(versions) + ".")
    lines += ["", _render(table_rows(report), markdown), ""]
    problems = dict.fromkeys(f"{r['framework']}: {r['status']}: {r.get('reason', '')}".replace("|", "/")
                             for r in report["rows"] if r["status"] != "ok")
    lines += [f"- {p}" for p in problems] + ([""] if problems else [])
    lines += [f"Verdict: {v}" for v in verdicts(report)] + [""]
    lines += [
        "ms/step: the median over the rounds of each round's mean step ± the stddev of all timed steps. "
        "×TF, ×best peer: the median of the per-round ratios (min-max over the rounds), time / TensorFlow's "
        "time, and time / the fastest peer's (TF, TF-XLA, PyTorch, torch.compile, whichever of them ran) in the "
        "same round; 2.00x = twice as slow. GFLOP/s: conv and dense work only, counted analytically (training = "
        "forward + weight gradient + input gradient but for the first layer), at the median step; % ceil = of "
        "the best numpy GEMM rate above. first step: the first training step of a fresh process (tinybn: a "
        "second fresh process, JIT cache warm; proc = that whole process, interpreter start included; TF: "
        "tf.function tracing included; compiled peers: compiling included). compile s: the compiled peers' "
        "first training step less the median step, + the same for the forward pass (not in the timings). "
        "peak MB: the worker's peak RSS; Δ: its growth after the imports (model, optimizer state, activations, "
        "gradients)."]
    return "\n".join(lines)


def check_losses(report):
    """Warnings: first-step losses that disagree across frameworks, or losses that went non-finite."""
    warnings = []
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        ok = [r for r in report["rows"] if r["model"] == model and r["status"] == "ok"]
        if not ok:
            continue
        ref = ok[0]
        for r in ok:
            if not math.isclose(r["loss0"], ref["loss0"], rel_tol=LOSS_RTOL):
                warnings.append(f"{model}: first-step loss {r['loss0']:.6f} ({r['framework']}) != "
                                f"{ref['loss0']:.6f} ({ref['framework']}): the networks differ")
            if "loss_last" in r and not (r["loss_last"] is None or math.isfinite(r["loss_last"])):
                warnings.append(f"{model}: {r['framework']} loss went non-finite ({r['loss_last']})")
    return warnings

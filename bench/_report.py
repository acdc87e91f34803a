"""The table bench_cifar.py prints (plain text or markdown) and its consistency checks."""
import math

LOSS_RTOL = 1e-3        # float32 first-step losses of the same network and weights


def _tf_row(report, model):
    return next((r for r in report["rows"] if r["framework"] == "tf" and r["model"] == model
                 and r["status"] == "ok"), None)


def _seconds(mean, sd):
    return f"{mean:.4f} ± {sd:.4f}"


def table_rows(report):
    """[header, *rows] of strings, one row per (framework, model)."""
    ceiling = report["gemm"].get("ceiling_gflops") if report["gemm"].get("status") == "ok" else None
    header = ["framework", "model", "train s/step", "fwd s/step", "train ×TF", "fwd ×TF",
              "train GFLOP/s (% ceil)", "fwd GFLOP/s (% ceil)", "first step s", "peak MB (Δ)"]
    out = [header]
    for r in report["rows"]:
        name = r["framework"]
        if r["status"] != "ok":
            out.append([name, r["model"], r["status"], "(see below)"] + [""] * (len(header) - 4))
            continue
        fwd_flops, train_flops = r["fwd_flops"], r["train_flops"]
        tf = _tf_row(report, r["model"])

        def ratio(key):
            return f"{r[key] / tf[key]:.2f}x" if tf else "n/a"

        def rate(flops, seconds):
            g = flops / seconds / 1e9
            return f"{g:.1f} ({100 * g / ceiling:.0f}%)" if ceiling else f"{g:.1f}"

        first = f"{r['first_step_s']:.2f}"
        if "first_proc_s" in r:
            first += f" (proc {r['first_proc_s']:.1f})"
        out.append([name, r["model"], _seconds(r["train_s"], r["train_sd"]), _seconds(r["fwd_s"], r["fwd_sd"]),
                    ratio("train_s"), ratio("fwd_s"), rate(train_flops, r["train_s"]), rate(fwd_flops, r["fwd_s"]),
                    first, f"{r['peak_rss_mb']:.0f} ({r['delta_rss_mb']:+.0f})"])
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


def format_table(report, markdown=False):
    """The whole report: settings, GEMM ceiling, the table and what its columns mean."""
    gemm = report["gemm"]
    lines = [f"Machine: {report['machine']}",
             f"Batch {report['batch_size']}, {report['threads']} threads for every framework, "
             f"{report['warmup']} warm-up + {report['steps']} timed steps per run, "
             f"{report.get('rounds', 1)} run(s) each, frameworks taking turns (mean ± stddev of all timed steps)."]
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
    lines += [
              "×TF: time / TensorFlow's time (2.00x = twice as slow). GFLOP/s: conv and dense work only, "
              "counted analytically (training = forward + weight gradient + input gradient but for the first "
              "layer); % ceil = of the best numpy GEMM rate above. first step: the first training step of a "
              "fresh process (tinybn: a second fresh process, JIT cache warm; proc = that whole process, "
              "interpreter start included; TF: tf.function tracing included). peak MB: the worker's peak RSS; "
              "Δ: its growth after the imports (model, optimizer state, activations, gradients)."]
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
            if "loss_last" in r and not math.isfinite(r["loss_last"]):
                warnings.append(f"{model}: {r['framework']} loss went non-finite ({r['loss_last']})")
    return warnings

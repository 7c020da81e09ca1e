"""Reports of the throughput models: Markdown tables and plots (one place for all of them).

``throughput_markdown`` / ``plot_roofline`` / ``plot_breakdown`` render
:func:`fpqvar_hw.flow.perf.throughput_report`; ``compare_markdown`` renders
:func:`fpqvar_hw.flow.simcycles.compare_to_sim`.
"""
from __future__ import annotations

from .perf import PAPER_IMAGES_PER_S

__all__ = ["fmt_rate", "throughput_markdown", "roofline_points", "roof", "plot_roofline", "plot_breakdown",
           "compare_markdown"]


# ------------------------------------------------------------------- reports
def fmt_rate(x: float) -> str:
    return f"{x:.3g}"


def throughput_markdown(rep: dict) -> str:
    lines = [f"# Throughput model: preset {rep['preset']} on {rep['platform']}", "",
             f"Clock {rep['clock_mhz']:g} MHz, batch {rep['batch']} "
             f"({'CFG doubles rows' if rep['cfg'] else 'no CFG'}), matrix-engine peak "
             f"{rep['peak_matrix_tflops']:.2f} TFLOP/s, DRAM {rep['dram_gbps']} GB/s x "
             f"{rep['dram_efficiency']} efficiency.", "",
             "| model | images/s (transformer) | host head s | decoder s (host) | "
             "images/s end-to-end | TFLOP/batch | DRAM GB/batch | memory-bound steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in rep["models"].items():
        mem = sum(1 for s in m["steps"] if s["bound"] == "memory")
        lines.append(f"| {name} | {fmt_rate(m['images_per_s'])} | {m['host_head_s']:.3g} | "
                     f"{m['decoder_s']:.3g} | {fmt_rate(m['end_to_end_images_per_s'])} | "
                     f"{m['tflop_per_batch']:.3g} | {m['dram_gb_per_batch']:.3g} | "
                     f"{mem}/{len(m['steps'])} |")
    ce = rep.get("clock_estimate") or {}
    if ce.get("images_per_s"):
        lines += ["", "## At the clock the RTL's logic depth supports", "",
                  f"Estimated achievable clock {ce['achievable_mhz']:g} MHz (limited by "
                  f"{ce['limited_by']}, logic depth {ce['limit_logic_depth']}) instead of the "
                  f"{rep['clock_mhz']:g} MHz planning figure; {ce['model']}.", "",
                  f"| model | images/s at {rep['clock_mhz']:g} MHz | images/s at "
                  f"{ce['achievable_mhz']:g} MHz |", "|---|---|---|"]
        for name, m in rep["models"].items():
            lines.append(f"| {name} | {fmt_rate(m['images_per_s'])} | "
                         f"{fmt_rate(ce['images_per_s'][name])} |")
    elif ce:
        lines += ["", f"Achievable clock: {ce.get('note', 'not estimated')}."]
    top = rep.get("as_built_top")
    if top:
        mem = top["memory"]
        lines += ["", "## The as-built top (the RTL that exists)", "",
                  "`fpqvar_hw/engines/top.py` as built today: attention FDOTs on the vector "
                  "engine's attention array, SOFTMAX on its softmax array (a Softmax unit "
                  "per lane, rows side by side), the other vector row operations one element per "
                  "cycle, the matrix engine reading the weights once per block of tm x "
                  "row_sets rows (the compiler's tile), "
                  "one 128-bit AXI master. Modelled per instruction (`asbuilt.evaluate_top`, "
                  f"docs/build.md); memory: {mem['source']}, {mem['beat_rate']:g} beat/cycle.", "",
                  "| model | planned images/s | as-built images/s | as-built at est. clock | "
                  "at est. clock, larger batch | "
                  "as-built, coarse off | as-built, fine off | as-built cycles | GEMM busy | "
                  "VEC busy | largest instruction kinds (share of engine cycles) | binding kind "
                  "per scale step |", "|" + "---|" * 12]
        for name, t in top["models"].items():
            g = sum(s["gemm_cycles"] for s in t["steps"])
            v = sum(s["vec_cycles"] for s in t["steps"])
            ab = t["pipeline_ablation"]
            e = (f"{fmt_rate(t['images_per_s_est'])} ({t['est_clock_mhz']:g} MHz)"
                 if t.get("images_per_s_est") else "-")
            eb = (f"{fmt_rate(t['images_per_s_est_batch'])} (batch {t['batch_est']})"
                  if t.get("images_per_s_est_batch") else "-")
            lines.append(f"| {name} | {fmt_rate(rep['models'][name]['images_per_s'])} | "
                         f"{fmt_rate(t['images_per_s'])} | {e} | {eb} | {fmt_rate(ab['no_coarse'])} | "
                         f"{fmt_rate(ab['no_fine'])} | {t['cycles']:.3g} | {g:.3g} | {v:.3g} | "
                         + ", ".join(f"{k} {100 * x:.0f} %"
                                     for k, x in list(t.get("cycle_share", {}).items())[:3])
                         + f" | {t.get('binding_summary', '-')} |")
    lines += ["", f"Paper (VCK190, depth not stated): {PAPER_IMAGES_PER_S} image/s.", "",
              "## Host-side assumption", "", rep["assumptions"]["host_work"] + f"; host: "
              f"{rep['assumptions']['host']} at {rep['assumptions']['host_gflops']:g} GFLOP/s.",
              "", "## What each pipeline level buys (transformer images/s)", "",
              "| model | both levels | no coarse (level 1 off) | no fine (level 2 off) | neither |",
              "|---|---|---|---|---|"]
    for name, a in rep["pipeline_ablation"].items():
        lines.append(f"| {name} | {fmt_rate(a['both'])} | {fmt_rate(a['no_coarse'])} | "
                     f"{fmt_rate(a['no_fine'])} | {fmt_rate(a['neither'])} |")
    lines += ["", "## Unit timings", "", "| unit | latency | cycles/item | item | source |",
              "|---|---|---|---|---|"]
    for k, v in rep["unit_timings"].items():
        lines.append(f"| {k} | {v['latency']} | {v['cycles_per_item']} | {v['item']} | "
                     f"{v['source']} |")
    lines += ["", f"Layer passes on the {rep['native_operand_bits']}-bit array: " +
              ", ".join(f"{k} {v}" for k, v in rep["passes"].items()), ""]
    head = rep["headline"]
    m = rep["models"][head]
    lines += [f"## Per-step breakdown ({head})", "",
              "| step | tokens | rows | KV | cycles | matrix | quant | vector | attention | "
              "DRAM | bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in m["steps"]:
        u = s["unit_cycles"]
        lines.append(f"| {s['step']} | {s['tokens']} | {s['rows']} | {s['kv_len']} | "
                     f"{s['cycles']:,} | {u['matrix']:,} | {u['quant']:,} | {u['vector']:,} | "
                     f"{u['attention']:,} | {s['dram_cycles']:,} | {s['bound']} |")
    return "\n".join(lines) + "\n"


def _savefig(fig, path) -> None:
    # Deterministic PNG: no Software/date metadata.
    fig.savefig(path, dpi=100, metadata={"Software": None})


def roofline_points(rep: dict) -> dict[str, list[tuple[float, float]]]:
    """Per model, one ``(GEMM FLOP per DRAM byte, GEMM TFLOP/s)`` point per scale step."""
    clock = rep["clock_mhz"] * 1e6
    out = {}
    for name, m in rep["models"].items():
        out[name] = [(s["gemm_gflop"] * 1e9 / (s["dram_mb"] * 1e6),
                      s["gemm_gflop"] * 1e9 / (s["cycles"] / clock) / 1e12)
                     for s in m["steps"]
                     if s["dram_mb"] > 0 and s["cycles"] > 0 and s["gemm_gflop"] > 0]
    return out


def roof(rep: dict, intensity: float) -> float:
    """The matrix engine's attainable TFLOP/s at ``intensity`` GEMM FLOP per DRAM byte."""
    return min(rep["peak_matrix_tflops"], rep["dram_gbps"] * rep["dram_efficiency"] / 1e3 * intensity)


def plot_roofline(rep: dict, path) -> None:
    """Roofline of the matrix engine: GEMM FLOP/s per scale step against GEMM FLOP per DRAM
    byte, under the matrix engine's peak and the DRAM roof.

    Only the matrix engine's FLOPs are counted (attention runs on its own unit and is not
    under this roof), so every point lies on or below the roof: a step takes at least its
    matrix cycles and at least its DRAM cycles.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    oi = [10 ** (x / 10) for x in range(-10, 51)]
    ax.plot(oi, [roof(rep, o) for o in oi], "k-", lw=1.5, label="roofline (matrix engine)")
    for name, pts in roofline_points(rep).items():
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", ms=3, lw=0.8, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GEMM operational intensity (GEMM FLOP / DRAM byte)")
    ax.set_ylabel("GEMM TFLOP/s per scale step")
    ax.set_title(f"{rep['preset']} on {rep['platform']}, batch {rep['batch']}")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_breakdown(rep: dict, path) -> None:
    """Per-step cost of the headline model (top, log axis, every step visible) and each
    unit's busy share of that cost (bottom, linear): units overlap in time, so their
    cycles are not stacked; the unit at or near 1.0 binds the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = rep["models"][rep["headline"]]
    steps = [s["step"] for s in m["steps"]]
    fig, (top, bot) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [1, 1.3]})
    top.plot(steps, [s["cycles"] / 1e6 for s in m["steps"]], "k.-")
    top.set_yscale("log")
    top.set_ylabel("step cost (Mcycles, all blocks)")
    top.grid(True, which="both", lw=0.3)
    top.set_title(f"{rep['headline']} per scale step, {rep['preset']}, batch {rep['batch']}")
    keys = ["matrix", "quant", "vector", "attention", "DRAM"]
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        share = [(s["dram_cycles"] if k == "DRAM" else s["unit_cycles"][k]) / s["cycles"]
                 for s in m["steps"]]
        bot.bar([x - 0.4 + (i + 0.5) * width for x in steps], share, width, label=k)
    bot.axhline(1.0, color="k", lw=0.6)
    bot.set_ylabel("busy cycles / step cost")
    bot.set_xlabel("scale step")
    bot.set_xticks(steps)
    bot.set_ylim(0, 1.3)
    bot.legend(fontsize=8, ncol=len(keys), loc="upper center")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def compare_markdown(cmp: dict) -> str:
    c = cmp["config"]
    mem = cmp["memory"]
    L = [f"# Throughput models vs simulated cycles ({cmp['model']})", "",
         f"Source: {cmp['source']}; config {c['preset']} tm={c['tm']} tn={c['tn']} "
         f"lanes={c['lanes']} quant_lanes={c['quant_lanes']}, {cmp['rows_per_step']} rows "
         f"(CFG); memory {mem['name']} (beat rate {mem['beat_rate']:g}/cycle).", "",
         "As-built model (the RTL top's engines and dispatch, `perf.top_step`) / simulated, "
         "and the planned-architecture model (`perf.evaluate`) / simulated:", "",
         "| step | tokens | coarse | fine | instructions | CYCLES | GEMM_CYCLES | VEC_CYCLES | "
         "OVERLAP_CYCLES | planned model CYCLES |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(d):
        if d["simulated"] is None:
            return f"{d['predicted']:,} / n/a"
        if d["ratio"] is None:
            return f"{d['predicted']:,} / {d['simulated']:,}"
        return f"{d['predicted']:,} / {d['simulated']:,} ({d['ratio']:.2f}x)"
    for s in cmp["steps"]:
        ins = s["instructions"]
        L.append(f"| {s['step']} | {s['tokens']} | {int(s['coarse'])} | {int(s['fine'])} | "
                 f"{ins['predicted']} / "
                 f"{ins['simulated'] if ins['simulated'] is not None else 'n/a'}"
                 f" | {cell(s['cycles'])} | {cell(s['gemm_cycles'])} | {cell(s['vec_cycles'])} | "
                 f"{cell(s['overlap_cycles'])} | {cell(s['planned']['cycles'])} |")
    return "\n".join(L) + "\n"



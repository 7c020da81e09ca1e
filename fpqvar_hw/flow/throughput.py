"""The as-built top's throughput report (:func:`top_report`) and ``python -m
fpqvar_hw.flow.throughput``: the throughput models from the command line."""
from __future__ import annotations

from .asbuilt import evaluate_top, platform_memory, step_breakdown
from .perf import MODELS, evaluate
from .reports import compare_markdown, fmt_rate
from .simcycles import compare_to_sim, load_sim_cycles


__all__ = ["top_breakdown", "binding_units", "top_report", "main", "REPORT_BATCH"]

#: The largest batch the throughput targets allow (issue 15: "batch B <= 4"): the report
#: also gives the as-built top at this batch (images per run; the compiler, isa_sim and the
#: driver run any batch, the KV caches and scratch grow with it).
REPORT_BATCH = 4


def top_breakdown(model, config, memory) -> dict[str, float]:
    """Share of the engines' standalone cycles per instruction kind over all scale steps
    of ``model`` (:func:`~fpqvar_hw.flow.asbuilt.step_breakdown`), largest first."""
    tot: dict[str, float] = {}
    for step in step_breakdown(model, config, memory):
        for k, v in step.items():
            tot[k] = tot.get(k, 0.0) + v
    total = sum(tot.values())
    return {k: v / total for k, v in sorted(tot.items(), key=lambda kv: -kv[1])}


def binding_units(steps: list[dict[str, float]]) -> str:
    """The largest instruction kind of each scale step, runs of equal steps merged:
    ``"steps 1-6 fc1, 7-10 SOFTMAX"``."""
    runs: list[list] = []
    for i, st in enumerate(steps, 1):
        kind = next(iter(st), "-")
        if runs and runs[-1][2] == kind:
            runs[-1][1] = i
        else:
            runs.append([i, i, kind])
    return "steps " + ", ".join(f"{a}{'' if a == b else f'-{b}'} {k}" for a, b, k in runs)


def top_report(config, platform, *, est_clock_mhz: float | None = None) -> dict:
    """JSON-ready as-built throughput of every model: at the configured clock, with each
    pipeline level off, at ``est_clock_mhz`` (the clock the logic depth supports, when
    given: ``images_per_s_est``, and at batch :data:`REPORT_BATCH` when the config's is
    smaller: ``images_per_s_est_batch``), the share of cycles per instruction kind and the
    binding kind of each scale step."""
    out = {}
    for name, m in MODELS.items():
        if m.C % 128:
            continue
        r = evaluate_top(m, config, platform)
        ab = {}
        for label, coarse, fine in (("no_coarse", False, True), ("no_fine", True, False)):
            c = config.replace(coarse_pipeline=coarse, fine_pipeline=fine)
            ab[label] = evaluate_top(m, c, platform, r.memory).images_per_s
        steps = step_breakdown(m, config, r.memory)
        share = top_breakdown(m, config, r.memory)
        out[name] = {**r.as_dict(), "pipeline_ablation": ab,
                     "cycle_share": {k: round(v, 4) for k, v in share.items()},
                     "binding": [next(iter(st), None) for st in steps],
                     "binding_summary": binding_units(steps)}
        if est_clock_mhz:
            out[name]["est_clock_mhz"] = est_clock_mhz
            out[name]["images_per_s_est"] = evaluate_top(
                m, config.replace(clock_mhz=est_clock_mhz), platform).images_per_s
            if config.batch < REPORT_BATCH:
                out[name]["batch_est"] = REPORT_BATCH
                out[name]["images_per_s_est_batch"] = evaluate_top(
                    m, config.replace(clock_mhz=est_clock_mhz, batch=REPORT_BATCH),
                    platform).images_per_s
    mem = platform_memory(platform, config.clock_mhz or platform.clock_mhz, config.dram_efficiency)
    return {"memory": {"name": mem.name, "read_latency": mem.read_latency,
                       "beat_rate": mem.beat_rate, "source": mem.source},
            "models": out}


# ------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m fpqvar_hw.flow.throughput [--sim-cycles JSON ...] [--platform P] [--preset NAME]``:
    the as-built and planned models against simulated cycle files (markdown), then the
    as-built top's images/s next to the planned architecture's for every model."""
    import argparse
    import sys

    from ..config import get_preset
    from .platform import get_platform, platform_names
    p = argparse.ArgumentParser(prog="python -m fpqvar_hw.flow.throughput", description=main.__doc__)
    p.add_argument("--sim-cycles", nargs="*", default=[], metavar="JSON",
                   help="cycle files of the top's simulation (driver or tb_top schema)")
    p.add_argument("--platform", default="vck190", choices=platform_names())
    p.add_argument("--preset", default="w4a4")
    p.add_argument("--no-models", action="store_true",
                   help="only the simulated-cycle comparisons")
    a = p.parse_args(argv)
    try:
        sims = [load_sim_cycles(f) for f in a.sim_cycles]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in sims:
        print(compare_markdown(compare_to_sim(s)))
    if not a.no_models:
        config, platform = get_preset(a.preset), get_platform(a.platform)
        rep = top_report(config, platform)
        print(f"# As-built top vs planned architecture: {a.preset} on {platform.name}\n")
        print(f"Memory: {rep['memory']['source']}, {rep['memory']['beat_rate']:g} beat/cycle.\n")
        print("| model | planned images/s | as-built images/s | as-built, coarse off | "
              "as-built, fine off | binding instruction kind per scale step |\n"
              "|---|---|---|---|---|---|")
        for name, t in rep["models"].items():
            plan = evaluate(name, config, platform).images_per_s
            ab = t["pipeline_ablation"]
            print(f"| {name} | {fmt_rate(plan)} | {fmt_rate(t['images_per_s'])} | "
                  f"{fmt_rate(ab['no_coarse'])} | {fmt_rate(ab['no_fine'])} | "
                  f"{t['binding_summary']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m fpqvar_hw.flow.throughput``: the throughput models from the command line."""
from __future__ import annotations

from .asbuilt import top_report
from .perf import evaluate
from .reports import compare_markdown, fmt_rate
from .simcycles import compare_to_sim, load_sim_cycles


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
              "as-built, fine off |\n|---|---|---|---|---|")
        for name, t in rep["models"].items():
            plan = evaluate(name, config, platform).images_per_s
            ab = t["pipeline_ablation"]
            print(f"| {name} | {fmt_rate(plan)} | {fmt_rate(t['images_per_s'])} | "
                  f"{fmt_rate(ab['no_coarse'])} | {fmt_rate(ab['no_fine'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

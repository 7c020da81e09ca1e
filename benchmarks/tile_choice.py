"""Token tiles per scale step: the compiler's rule against the alternatives, on the
as-built model of the full-size top.

The compiler's tiles (:func:`fpqvar_hw.host.plan.tiles`) put whole rows (both CFG halves,
every image of the batch) into one tile, so the step's GEMMs read their weights once for
all of them, and split a step of more than ``SPLIT_TOKENS`` token rows into two tiles at
least, so that the matrix engine overlaps the vector engine.  This script times every
scale step of a model (``fpqvar_hw.flow.asbuilt.top_step``, preset w4a4 on the vck190 at
300 MHz, DRAM 25.6 GB/s x 0.8, read latency 150 cycles) three ways: the rule, one row
per tile at most (the programs before 2026-12-06), and the best of 1-8 equal tiles of
consecutive token rows (``tile`` = ceil(rows x L / n) <= gemm_rows) -- the
rule is a fixed function of the step's shape shared by the compiler and the model, the
best split is what a search over the model would pick.

    python benchmarks/tile_choice.py [--model d16] [--batch 1 4]

Writes ``benchmarks/results/tile_choice.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "tile_choice"


def step_table(model: str, batch: int) -> dict:
    from fpqvar_hw.config import get_preset
    from fpqvar_hw.flow import asbuilt
    from fpqvar_hw.flow.perf import MODELS
    from fpqvar_hw.flow.platform import get_platform
    from fpqvar_hw.host.plan import tiles

    cfg = get_preset("w4a4").replace(batch=batch)
    m = MODELS[model]
    plat = get_platform("vck190")
    mem = asbuilt.platform_memory(plat, plat.clock_mhz, cfg.dram_efficiency)
    rows = 2 * batch
    steps = []
    for Ls_end, n in zip(m.kv_lengths, m.tokens):
        def run(**kw):
            return asbuilt.top_step(m.C, m.heads, 4 * m.C, m.depth, Ls_end - n, n, rows, cfg, mem,
                                    L_total=m.kv_lengths[-1], **kw).cycles
        T = rows * n
        split = {}
        for k in range(1, 9):
            t = -(-T // k)
            if t <= cfg.gemm_rows and -(-T // t) == k:
                split[k] = run(tile=t, tiles="flat")
        best = min(split, key=split.get) if split else None
        steps.append({"tokens": n, "token_rows": T,
                      "rule_tiles": len(tiles(n, rows, cfg.gemm_rows)), "rule": run(),
                      "row_tiles": len(tiles(n, rows, cfg.gemm_rows, order="rows")),
                      "rows": run(tiles="rows"),
                      "best_tiles": best, "best": split[best] if best else None})
    tot = {k: sum(s[k] for s in steps) for k in ("rule", "rows")}
    tot["best"] = sum(s["best"] if s["best"] is not None else s["rule"] for s in steps)
    clock = plat.clock_mhz * 1e6
    return {"model": model, "batch": batch, "rows": rows, "steps": steps, "cycles": tot,
            "images_per_s": {k: batch * clock / v for k, v in tot.items()}}


def markdown(results: list[dict]) -> str:
    out = ["# Token tiles per scale step (as-built model)", "",
           "From `python benchmarks/tile_choice.py` (w4a4 on vck190 at 300 MHz; cycles in millions).",
           "`rule`: the compiler's tiles (`fpqvar_hw.host.plan.tiles`); `rows`: one row per tile at "
           "most (before 2026-12-06); `best`: the fastest of 1-8 equal tiles of consecutive token rows.",
           ""]
    for r in results:
        out += [f"## {r['model']}, batch {r['batch']} ({r['rows']} rows with CFG)", "",
                "| tokens | token rows | rule tiles | rule | row tiles | rows | best tiles | best |",
                "|---|---|---|---|---|---|---|---|"]
        for s in r["steps"]:
            best = "-" if s["best"] is None else f"{s['best'] / 1e6:.1f}"
            out.append(f"| {s['tokens']} | {s['token_rows']} | {s['rule_tiles']} | {s['rule'] / 1e6:.1f} | "
                       f"{s['row_tiles']} | {s['rows'] / 1e6:.1f} | {s['best_tiles'] or '-'} | {best} |")
        ips = r["images_per_s"]
        out += ["", f"Whole image: rule {r['cycles']['rule'] / 1e6:.1f} M cycles ({ips['rule']:.4f} images/s), "
                    f"rows {r['cycles']['rows'] / 1e6:.1f} M ({ips['rows']:.4f}), best split "
                    f"{r['cycles']['best'] / 1e6:.1f} M ({ips['best']:.4f}).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/tile_choice.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="d16", help="d16, d20, d24, d30 (default d16)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="images per batch (default 1 4)")
    a = ap.parse_args(argv)
    from fpqvar_hw.flow.perf import MODELS
    if a.model not in MODELS or MODELS[a.model].C % 128:
        print(f"error: --model must be one of {', '.join(k for k, v in MODELS.items() if v.C % 128 == 0)}, "
              f"got {a.model!r}", file=sys.stderr)
        return 2
    if any(not 1 <= b <= 8 for b in a.batch):
        print(f"error: --batch values must be 1..8, got {a.batch}", file=sys.stderr)
        return 2
    from fpqvar_hw.cache import write_text_atomic
    results = [step_table(a.model, b) for b in a.batch]
    md = markdown(results)
    print(md)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT.with_suffix(".md"), md + "\n")
    write_text_atomic(OUT.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Golden vector exporter: ``python -m fpqvar_quant.golden <unit> --out DIR --seed S --n N [...]``.

Writes ``DIR/vectors.npz`` (integer arrays: inputs and expected outputs as raw
bit patterns) and ``DIR/manifest.json`` (unit, config, formats, seed, n,
golden-model version, array names/shapes/dtypes).  ``--help`` after a unit name
lists that unit's options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import GOLDEN_VERSION, exporters


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fpqvar_quant.golden",
                                description="Export bit-exact golden vectors of a hardware unit.")
    sub = p.add_subparsers(dest="unit", required=True, metavar="UNIT")
    for name, ex in sorted(exporters().items()):
        sp = sub.add_parser(name, help=ex.help, description=ex.help)
        sp.add_argument("--out", type=Path, required=True, help="output folder (created)")
        sp.add_argument("--seed", type=int, required=True, help="seed of the random inputs")
        sp.add_argument("--n", type=int, default=1000, help="number of random vectors/groups (default 1000)")
        ex.add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be >= 1, got {args.n}")
    ex = exporters()[args.unit]
    rng = np.random.default_rng(args.seed)
    arrays, config = ex.run(args, rng)
    for k, a in arrays.items():
        if np.asarray(a).dtype.kind not in "iub":
            raise TypeError(f"exporter {args.unit!r} returned non-integer array {k!r} ({a.dtype}); "
                            "golden vectors are integer bit patterns")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "vectors.npz", **arrays)
    manifest = {"unit": args.unit, "version": GOLDEN_VERSION, "seed": args.seed, "n": args.n,
                "config": config,
                "arrays": {k: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
                           for k, a in arrays.items()}}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    print(f"wrote {len(arrays)} arrays to {args.out / 'vectors.npz'} and manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

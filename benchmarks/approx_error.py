"""Accuracy of the vector unit's FP32 approximations: per function against float64,
and all together on the shipped tiny digits VAR (KL divergence of the head logits).

**Part 1, per function.**  For each approximation defined in
``fpqvar_quant.golden.vector`` (the bit-exact definition the RTL matches),
evaluates the golden model over its input range and reports the maximum and
mean error of the FP32 result against the float64 value of the exact function
(computed from the same FP32 inputs), in units in the last place of FP32 (ulp
of the exact result) and as relative error.  Results below a floor are excluded
from the ulp columns and counted separately (max absolute error).

Input sets (``--stride`` thins the large sweeps):

* reciprocal: every FP32 mantissa of one binade, [1, 2) (the function is exactly
  scale-invariant for normal results: 2^k scaling is exact), 2^23 inputs;
* rsqrt: every FP32 in [1, 4) (two binades: even and odd exponent), 2^24 inputs;
* exp: every ``stride``-th FP32 encoding in [-104, 89] plus every FP16 value;
* gelu: every ``stride``-th FP32 encoding with abs(x) <= 2^16 plus every FP16 value;
* row operations (``P = 8``, rows of 64 and 1024): seeded rows whose scale is
  log-uniform in [2^-20, 2^20] (softmax: [2^-10, 2^10], beyond that almost every
  output underflows or equals 1; reported once over all outputs and once over
  outputs >= 2^-10), normal entries, with and without a random offset per row
  of up to ~4x the row's range (layernorm) and normal adaLN ``scale``/``shift`` (std 0.5); ``l2norm`` is
  per 64-wide head with a log-temperature uniform in [-3, 6] (above ln 100 it is
  clamped).  Layernorm's output has unit RMS and cancels (``x - mean`` and
  ``y*(1 + scale) + shift``), so its errors are in ulp of ``max(|y|, 1)``: an
  absolute error in units of 2^-23 for outputs below 1.

**Part 2, the model** (``--kl``).  The shipped tiny digits VAR
(``fpqvar_quant/assets/digits``) runs teacher-forced twice on the same token
sequences: exact float32 PyTorch, and with the hardware definitions patched in
(:func:`hardware_approximations`: GELU, layernorm + adaLN modulate, q/k L2 norm
with temperature, and attention = canonical-order dot products, hardware
softmax, canonical-order PV, all through the ``fpqvar_quant.approx`` twins).
The token sequences are sampled from the exact model (``var.sample_tokens``,
the shipped sampling settings) for every class in ``--classes`` and every seed
in ``--seeds``.  Reported per scale step and overall: mean and max of the
per-token ``KL(p_exact || p_hw)`` (nats, float64 from the float32 logits), the
max absolute logit difference and the fraction of tokens whose arg-max agrees;
once for each approximation alone and once for all of them, and, for scale, the
same statistics between a float64 copy of the model and the exact float32 one
(what float32 rounding alone does).

Usage::

    python benchmarks/approx_error.py [--stride 1021] [--out table.md]   # part 1
    python benchmarks/approx_error.py --kl [--classes 0-9] [--seeds 0-3]  # part 2
        # writes benchmarks/results/approx_kl.json and .md (--results DIR)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fpqvar_quant.golden import vector as v  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- part 1
def encodings_between(lo: float, hi: float, stride: int) -> np.ndarray:
    """Every ``stride``-th FP32 value in [lo, hi] (both signs handled by encoding order)."""
    out = []
    for a, b in ((max(lo, 0.0), hi), (max(-hi, 0.0), -lo)):
        if b < a:
            continue
        ea, eb = np.float32(a).view(np.uint32), np.float32(b).view(np.uint32)
        bits = np.arange(int(ea), int(eb) + 1, stride, dtype=np.uint64).astype(np.uint32)
        vals = bits.view(np.float32)
        out.append(vals if (a, b) == (max(lo, 0.0), hi) else -vals)
    x = np.concatenate(out)
    return x[(x >= lo) & (x <= hi)]


def all_fp16() -> np.ndarray:
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return x[np.isfinite(x)]


def gelu64(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) in float64, written without cancellation: x / (1 + exp(-2u))."""
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-2 * u))


def measure(name: str, fn, ref, x, floor: float = 2.0 ** -126, unit: float = 0.0) -> dict:
    """Errors where the exact result is >= ``floor`` (and finite in FP32); below it,
    the count and the largest absolute error.  ``unit > 0``: the ulp and relative
    columns use ``max(|exact|, unit)`` as the reference magnitude."""
    t0 = time.time()
    with np.errstate(all="ignore"):
        y = np.asarray(fn(x)).astype(np.float64).reshape(-1)
        r = np.asarray(ref(x)).astype(np.float64).reshape(-1)
    with np.errstate(over="ignore"):
        r32 = r.astype(np.float32)
    finite = np.isfinite(r32)
    normal = finite & (np.abs(r) >= floor)
    mag = np.maximum(np.abs(r[normal]), unit)
    ulp = np.exp2(np.floor(np.log2(mag)) - 23)
    err = np.abs(y[normal] - r[normal])
    tiny = finite & ~normal
    return {"name": name, "n": int(r.size), "max_ulp": float((err / ulp).max()),
            "mean_ulp": float((err / ulp).mean()), "max_rel": float((err / mag).max()),
            "mean_rel": float((err / mag).mean()),
            "exact_frac": float((y[normal] == r32[normal]).mean()),
            "tiny_n": int(tiny.sum()), "tiny_max_abs": float(np.abs(y[tiny] - r[tiny]).max(initial=0)),
            "overflow_agrees": bool(np.array_equal(np.isinf(y), np.isinf(r32))),
            "seconds": time.time() - t0}


def _rows(seed: int, n: int, length: int, lo: float, hi: float) -> np.ndarray:
    """``n`` rows of normal entries times a per-row scale log-uniform in [2^lo, 2^hi]."""
    rng = np.random.default_rng(seed)
    scale = np.exp2(rng.uniform(lo, hi, (n, 1)))
    return (rng.standard_normal((n, length)) * scale).astype(np.float32)


def softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def layernorm64(x, scale, shift, eps: float = 1e-6) -> np.ndarray:
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    # eps is the FP32 constant of the definition, as in torch's FP32 LayerNorm
    y = (x - mu) / np.sqrt(var + float(np.float32(eps)))
    return y * (1 + scale.astype(np.float64)) + shift.astype(np.float64)


def l2norm64(q, t) -> np.ndarray:
    q = q.astype(np.float64)
    n = np.sqrt((q * q).sum(-1, keepdims=True))
    return q / np.maximum(n, 1e-12) * np.exp(np.minimum(t.astype(np.float64), math.log(100.0)))


def row_cases(n_rows: int) -> list[tuple]:
    """(name, fn, ref, x, label, floor, unit) for the row operations."""
    cases = []
    for length in (64, 1024):
        n = max(1, n_rows * 64 // length)
        x = _rows(11 + length, n, length, -10, 10)
        for floor in (2.0 ** -126, 2.0 ** -10):
            cases.append((f"softmax C={length}", lambda x: v.softmax(x, P=8), softmax64, x,
                          f"{n} rows, scale 2^+-10", floor, 0.0))
    for length in (64, 1024):
        n = max(1, n_rows * 64 // length)
        rng = np.random.default_rng(21 + length)
        x0 = _rows(23 + length, n, length, -20, 20)
        sc, sh = (rng.standard_normal((2, n, length)) * 0.5).astype(np.float32)
        offset = (rng.standard_normal((n, 1)) * 4 * np.abs(x0).max(-1, keepdims=True)).astype(np.float32)
        for x, label in ((x0, "no offset"), ((x0 + offset).astype(np.float32), "offset")):
            cases.append((f"layernorm_modulate C={length}",
                          lambda x, sc=sc, sh=sh: v.layernorm_modulate(x, sc, sh, P=8),
                          lambda x, sc=sc, sh=sh: layernorm64(x, sc, sh), x,
                          f"{n} rows, scale 2^+-20, {label}", 2.0 ** -126, 1.0))
    rng = np.random.default_rng(31)
    n = n_rows * 4
    q = _rows(32, n, 64, -20, 20).reshape(n // 4, 4, 64)
    t = rng.uniform(-3, 6, (n // 4, 4, 1)).astype(np.float32)
    cases.append(("l2norm_temperature hd=64", lambda q, t=t: v.l2norm_temperature(q, t, P=8),
                  lambda q, t=t: l2norm64(q, t), q, f"{n} heads, scale 2^+-20, t in [-3,6]",
                  2.0 ** -126, 0.0))
    return cases


def error_table(stride: int, n_rows: int) -> tuple[str, list[dict]]:
    one_binade = np.arange(1 << 23, dtype=np.uint32) | np.uint32(0x3F800000)
    two_binades = np.arange(1 << 24, dtype=np.uint32) + np.uint32(0x3F800000)
    cases = [
        ("reciprocal", v.reciprocal, lambda x: 1 / x.astype(np.float64), one_binade.view(np.float32),
         "[1,2) all", 2.0 ** -126, 0.0),
        ("rsqrt", v.rsqrt, lambda x: 1 / np.sqrt(x.astype(np.float64)), two_binades.view(np.float32),
         "[1,4) all", 2.0 ** -126, 0.0),
        ("exp", v.exp, lambda x: np.exp(x.astype(np.float64)),
         np.concatenate([encodings_between(-104, 89, stride), all_fp16()]),
         f"[-104,89] /{stride} + FP16", 2.0 ** -126, 0.0),
        ("gelu", v.gelu, lambda x: gelu64(x.astype(np.float64)),
         np.concatenate([encodings_between(-65536, 65536, stride), all_fp16()]),
         f"abs(x)<=2^16 /{stride} + FP16", 2.0 ** -100, 0.0),
        *row_cases(n_rows),
    ]
    lines = ["| function | inputs | n | max err (ulp) | mean err (ulp) | max rel | mean rel | "
             "correctly rounded | below floor: floor, n, max abs err | Inf iff exact overflows |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, fn, ref, x, label, floor, unit in cases:
        r = measure(name, fn, ref, x, floor, unit)
        r["inputs"] = label
        rows.append(r)
        print(f"{name}: {r['n']} outputs in {r['seconds']:.1f} s", file=sys.stderr)
        ulp = " (ulp of max(abs(y),1))" if unit else ""
        lines.append(f"| {name} | {label} | {r['n']:,} | {r['max_ulp']:.3g}{ulp} | {r['mean_ulp']:.3g} | "
                     f"{r['max_rel']:.3g} | {r['mean_rel']:.3g} | {100 * r['exact_frac']:.1f} % | "
                     f"2^{int(np.log2(floor))}, {r['tiny_n']:,}, {r['tiny_max_abs']:.2g} | "
                     f"{'yes' if r['overflow_agrees'] else 'NO'} |")
    return "\n".join(lines), rows


# --------------------------------------------------------------------------- part 2
#: Switches of :func:`hardware_approximations`, each a group of hardware units.
APPROXIMATIONS = ("gelu", "layernorm", "l2norm", "attention")


def _block_forward(block):
    """``AdaLNSelfAttn.forward`` with both ``LN(x)*(1 + scale) + shift`` as
    ``approx.layernorm_modulate`` (the residual adds are the same FP32 ops as the
    hardware's ``gamma_residual``: one multiply, one add)."""
    from fpqvar_quant import approx

    def forward(x, cond_BD, attn_bias):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = block.modulation(cond_BD)
        h = approx.layernorm_modulate(x, scale1, shift1)
        x = x + block.drop_path(block.attn(h, attn_bias=attn_bias).mul_(gamma1))
        h = approx.layernorm_modulate(x, scale2, shift2)
        x = x + block.drop_path(block.ffn(h).mul(gamma2))
        return x
    return forward


def _head_nm_forward(head_nm):
    from fpqvar_quant import approx

    def forward(x_BLC, cond_BD):
        scale, shift = head_nm.ada_lin(cond_BD).view(-1, 1, 2, head_nm.C).unbind(2)
        return approx.layernorm_modulate(x_BLC, scale, shift)
    return forward


def hardware_attention(q, k, v_, attn_bias=None, P: int = 8):
    """``golden.attention.attention`` on torch tensors ``[..., L, 64]`` with an additive mask.

    The hardware attention has no mask (cached inference attends to every cached
    key); in the teacher-forced forward the block-causal mask is added to the
    scores, which gives the same bits as the hardware on the visible keys: masked
    scores are -Inf, ``exp`` of them is exactly +0, and the masked keys come after
    the visible ones (like the zero padding of ``tree_sum``).
    """
    from fpqvar_quant import approx
    from fpqvar_quant.golden.attention import tree_last

    xp = approx.TORCH
    scores = tree_last(xp.mul(q[..., :, None, :], k[..., None, :, :]), P, xp)      # [..., Lq, Lk]
    if attn_bias is not None:
        scores = scores + attn_bias.to(scores.dtype)
    p = approx.softmax(scores, P)
    return tree_last(xp.mul(p[..., :, None, :], v_.transpose(-1, -2)[..., None, :, :]), P, xp)


def _attn_forward(attn, approx_l2: bool, approx_att: bool, P: int = 8):
    """``SelfAttention.forward`` (teacher-forced eval path, no KV cache) with the
    hardware's q/k normalisation and/or attention core (:func:`hardware_attention`)."""
    import torch.nn.functional as F
    from fpqvar_quant import approx

    if not attn.attn_l2_norm or attn.scale != 1.0:
        raise ValueError("the hardware attention needs attn_l2_norm=True models (softmax scale 1)")
    if attn.head_dim != 64:
        raise ValueError(f"the hardware attention has head_dim 64, the model has {attn.head_dim}")

    def forward(x, attn_bias):
        if attn.caching or attn.training:
            raise RuntimeError("hardware_approximations patches the teacher-forced eval forward "
                               "only (no KV cache, no dropout)")
        B, L, C = x.shape
        qkv = (attn.mat_qkv(x) + attn.qkv_bias()).view(B, L, 3, attn.num_heads, attn.head_dim)
        q, k, v_ = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)
        if approx_l2:
            q = approx.l2norm_temperature(q, attn.scale_mul_1H11, P)
            k = approx.l2norm_temperature(k, None, P)
        else:
            q = F.normalize(q, dim=-1).mul(attn.scale_mul_1H11.clamp_max(attn.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if attn.kv_quantizer is not None:
            k, v_ = attn.kv_quantizer(k, v_)
        if approx_att:
            out = hardware_attention(q, k, v_, attn_bias, P)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v_, attn_mask=None if attn_bias is None else attn_bias.to(q.dtype), scale=attn.scale)
        return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B, L, C)))
    return forward


@contextlib.contextmanager
def hardware_approximations(var, enable: Iterable[str] = APPROXIMATIONS) -> Iterator[None]:
    """Within the block, ``var`` (a :class:`fpqvar_quant.var.VAR` in eval mode,
    ``attn_l2_norm=True``) computes the enabled groups with the hardware definitions
    (``fpqvar_quant.approx``, bit-identical to ``golden.vector``/``golden.attention``):

    * ``"gelu"``: every FFN activation is ``approx.gelu`` (exp + reciprocal inside);
    * ``"layernorm"``: every ``LN(x)*(1 + scale) + shift`` (blocks and the head's
      ``head_nm``) is ``approx.layernorm_modulate`` (rsqrt inside);
    * ``"l2norm"``: q and k normalisation (q times the temperature) is
      ``approx.l2norm_temperature`` (rsqrt, exp);
    * ``"attention"``: scores, softmax (exp, reciprocal) and PV as in
      ``golden.attention`` (canonical summation order, ``P = 8``).

    Teacher-forced forward only.  The original forwards are restored on exit
    (also on error); an empty ``enable`` changes nothing.
    """
    enable = set(enable)
    unknown = enable - set(APPROXIMATIONS)
    if unknown:
        raise ValueError(f"unknown approximation group(s) {sorted(unknown)}; choose from {APPROXIMATIONS}")
    from fpqvar_quant import approx

    patched: list[object] = []

    def patch(module, forward):
        module.forward = forward           # instance attribute shadows the class method
        patched.append(module)

    try:
        for b in var.blocks:
            if "gelu" in enable:
                patch(b.ffn.act, approx.gelu)
            if "layernorm" in enable:
                patch(b, _block_forward(b))
            if {"l2norm", "attention"} & enable:
                patch(b.attn, _attn_forward(b.attn, "l2norm" in enable, "attention" in enable))
        if "layernorm" in enable:
            patch(var.head_nm, _head_nm_forward(var.head_nm))
        yield
    finally:
        for m in patched:
            del m.forward


def parse_range(text: str) -> list[int]:
    """``"0-9"`` or ``"1,3,5"`` or ``"0-3,7"`` -> list of ints."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        except ValueError:
            raise ValueError(f"expected integers or ranges like 0-9, got {text!r}") from None
    return out


def teacher_forcing_set(model, classes: list[int], seeds: list[int]):
    """(labels [N], ground-truth tokens [N, L], teacher-forcing input [N, L-1, Cvae]):
    one sequence per (seed, class), sampled from the exact model with the shipped
    sampling settings."""
    import torch

    var, s = model.var, model.sampling
    labels, idx, xin = [], [], []
    with torch.no_grad():
        for seed in seeds:
            lab = torch.tensor(classes, dtype=torch.long)
            res = var.sample_tokens(len(classes), lab, g_seed=seed, cfg=s.cfg, top_k=s.top_k, top_p=s.top_p)
            labels.append(lab)
            idx.append(torch.cat(res.idx_Bl, dim=1))
            xin.append(model.vae.quantize.idxBl_to_var_input(res.idx_Bl))
    return torch.cat(labels), torch.cat(idx), torch.cat(xin)


def logits_kl(exact, hw, begin_ends) -> dict:
    """Per-token KL(softmax(exact) || softmax(hw)) in float64, summarised per scale step."""
    import torch

    la = torch.log_softmax(exact.double(), -1)
    lb = torch.log_softmax(hw.double(), -1)
    kl = (la.exp() * (la - lb)).sum(-1)                      # [N, L]
    dlog = (exact.double() - hw.double()).abs().amax(-1)     # [N, L]
    agree = (exact.argmax(-1) == hw.argmax(-1)).double()
    steps = []
    for si, (bg, ed) in enumerate(begin_ends):
        steps.append({"step": si, "tokens": int(kl[:, bg:ed].numel()),
                      "kl_mean": kl[:, bg:ed].mean().item(), "kl_max": kl[:, bg:ed].max().item(),
                      "max_abs_logit_diff": dlog[:, bg:ed].max().item(),
                      "argmax_agree": agree[:, bg:ed].mean().item()})
    return {"steps": steps, "kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
            "step_mean_of_means": float(np.mean([s["kl_mean"] for s in steps])),
            "max_abs_logit_diff": dlog.max().item(), "argmax_agree": agree.mean().item()}


def approx_kl(model, classes: list[int], seeds: list[int],
              configs: "dict[str, Iterable[str]] | None" = None, *, reference: bool = False) -> dict:
    """KL of the head logits, exact model vs hardware approximations, per config
    (name -> enabled groups; default: each group alone and all together).

    ``reference``: also ``"reference"``, the same statistics for a float64 copy of
    the model against the exact float32 one (what FP32 rounding alone costs)."""
    import copy

    import torch

    if configs is None:
        configs = {**{g: (g,) for g in APPROXIMATIONS}, "all": APPROXIMATIONS}
    var = model.var
    if var.training:
        raise ValueError("put the model in eval mode (teacher-forced eval forward)")
    labels, _, xin = teacher_forcing_set(model, classes, seeds)
    with torch.no_grad():
        exact = var(labels, xin)
        out = {"classes": classes, "seeds": seeds, "sequences": int(len(labels)),
               "patch_nums": list(var.patch_nums), "configs": {}}
        for name, groups in configs.items():
            t0 = time.time()
            with hardware_approximations(var, groups):
                hw = var(labels, xin)
            r = logits_kl(exact, hw, var.begin_ends)
            r["groups"] = list(groups)
            r["seconds"] = time.time() - t0
            out["configs"][name] = r
        if reference:
            var64 = copy.deepcopy(var).double()
            r = logits_kl(var64(labels, xin.double()), exact, var.begin_ends)
            r["groups"] = []
            out["reference"] = r
    return out


def kl_markdown(res: dict, cmd: str) -> str:
    steps = res["patch_nums"]
    lines = [f"# Hardware approximations on the tiny digits VAR: KL of the head logits\n",
             f"Generated by `{cmd}`.  {res['sequences']} teacher-forced sequences "
             f"(classes {res['classes']}, seeds {res['seeds']}, tokens sampled from the exact "
             "model); per token KL(p_exact || p_hw) in nats, mean over the tokens of each scale "
             "step (patch size in brackets); max |logit diff| and the fraction of tokens whose "
             "arg-max agrees over all tokens.\n",
             "| approximations | " + " | ".join(f"step {i} ({p}x{p})" for i, p in enumerate(steps))
             + " | mean (all tokens) | max (one token) | max abs logit diff | argmax agrees |",
             "|---|" + "---:|" * (len(steps) + 4)]
    rows = list(res["configs"].items())
    if "reference" in res:
        rows.append(("reference: float64 model vs exact float32 (no approximation)", res["reference"]))
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{s['kl_mean']:.3g}" for s in r["steps"])
                     + f" | {r['kl_mean']:.3g} | {r['kl_max']:.3g} | {r['max_abs_logit_diff']:.3g} | "
                     f"{100 * r['argmax_agree']:.2f} % |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stride", type=int, default=1021,
                    help="take every STRIDE-th FP32 encoding in the exp/gelu sweeps (default 1021)")
    ap.add_argument("--rows", type=int, default=4096,
                    help="rows of 64 for the row operations (fewer rows of 1024; default 4096)")
    ap.add_argument("--out", help="also write the markdown error table to this file")
    ap.add_argument("--kl", action="store_true",
                    help="measure the KL of the digits VAR's logits instead of the error table")
    ap.add_argument("--classes", default="0-9", help="classes for --kl (default 0-9)")
    ap.add_argument("--seeds", default="0-3", help="sampling seeds for --kl (default 0-3)")
    ap.add_argument("--results", default=str(RESULTS),
                    help="folder for approx_kl.json/.md (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.stride < 1:
        ap.error("--stride must be >= 1")
    if args.rows < 16:
        ap.error("--rows must be >= 16")
    if not args.kl:
        table, _ = error_table(args.stride, args.rows)
        print(table)
        if args.out:
            Path(args.out).write_text(table + "\n")
        return 0

    import torch
    from fpqvar_quant.digits.model import load_digits_model

    try:
        classes, seeds = parse_range(args.classes), parse_range(args.seeds)
    except ValueError as e:
        ap.error(str(e))
    torch.set_flush_denormal(False)
    t0 = time.time()
    res = approx_kl(load_digits_model(), classes, seeds, reference=True)
    cmd = "python benchmarks/approx_error.py --kl" + (
        f" --classes {args.classes}" if args.classes != "0-9" else "") + (
        f" --seeds {args.seeds}" if args.seeds != "0-3" else "")
    md = kl_markdown(res, cmd)
    print(md)
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "approx_kl.json").write_text(json.dumps({"command": cmd, **res}, indent=1) + "\n")
    (out / "approx_kl.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

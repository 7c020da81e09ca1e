"""Build the (VQVAE, VAR) pair the PTQ tools work on: from official checkpoints,
or randomly initialised (the "quantization-test" init) for CPU smoke runs.

:class:`ModelSpec` is the frozen recipe; it is stored inside quantized-model
files so ``sample``/``export`` rebuild the same shape.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ModelSpec", "build_models", "rebuild", "parse_patch_nums", "state_digest"]

_PN_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def parse_patch_nums(text: str) -> tuple[int, ...]:
    """``"1,2,3,4"`` -> ``(1, 2, 3, 4)`` with a clear error."""
    try:
        pns = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"patch nums must be comma-separated integers, got {text!r}") from None
    if len(pns) < 2 or list(pns) != sorted(set(pns)) or pns[0] < 1:
        raise ValueError(f"patch nums must be >= 2 strictly increasing positive ints, got {text!r}")
    return pns


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain the models.

    With ``var_ckpt`` the VAR shape (depth, patch nums, shared adaLN, ...) is
    read from the checkpoint and the official VQVAE needs ``vae_ckpt``.
    Without checkpoints a random model of ``depth`` is built from
    ``init_seed`` with the quantization-test init (non-trivial gammas);
    ``vae_ch``, ``vocab_size``, ``num_classes`` and ``patch_nums`` shrink it
    for CPU runs; ``outlier_channels`` gives it a few large activation channels
    (see :func:`fpqvar_quant.var.init.quantization_test_init_`).
    """

    depth: int = 16
    patch_nums: tuple[int, ...] = _PN_256
    shared_aln: bool = False
    var_ckpt: str | None = None
    vae_ckpt: str | None = None
    init_seed: int = 0
    vae_ch: int = 160
    vocab_size: int = 4096
    num_classes: int = 1000
    outlier_channels: int = 0
    var_sha256: str | None = None
    vae_sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, got {self.depth!r}")
        if (64 * self.depth) % 128:
            raise ValueError(f"depth {self.depth} gives C = 64*depth = {64 * self.depth}, not a "
                             "multiple of 128 (the FP4 group size): use an even depth "
                             "(official: 16, 20, 24, 30, 36)")
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        for label, p in (("var_ckpt", self.var_ckpt), ("vae_ckpt", self.vae_ckpt)):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"{label} {p} does not exist")
        for label, digest, ck in (("var", self.var_sha256, self.var_ckpt),
                                  ("vae", self.vae_sha256, self.vae_ckpt)):
            if digest is not None and ck is None:
                raise ValueError(f"--{label}-sha256 checks --{label}-ckpt, which is not given")
        if (self.var_ckpt is None) != (self.vae_ckpt is None):
            raise ValueError("give both --var-ckpt and --vae-ckpt (official weights) or neither "
                             "(random quantization-test init)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(**{**d, "patch_nums": tuple(d["patch_nums"])})


def build_models(spec: ModelSpec, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
    """``(vae, var, shape)`` in eval mode on ``device``; ``shape`` is a checkpoint-free
    :class:`ModelSpec` of the same architecture (what :func:`rebuild` needs)."""
    from ..var import build_vae_var, infer_var_config, load_into, read_state_dict

    if spec.var_ckpt is not None:
        sd = read_state_dict(spec.var_ckpt, sha256=spec.var_sha256)
        vc = infer_var_config(sd)
        pns = vc.patch_nums
        if pns is None:   # not a released schedule: accept --patch-nums if its L matches
            L = int(sd["pos_1LC"].shape[1])
            if sum(p * p for p in spec.patch_nums) != L:
                raise ValueError(f"{spec.var_ckpt}: pos_1LC has L={L} tokens, which matches no "
                                 "known schedule; pass --patch-nums with sum(pn^2) = L")
            pns = spec.patch_nums
        shape = ModelSpec(depth=vc.depth, patch_nums=pns, shared_aln=vc.shared_aln,
                          vocab_size=vc.V, num_classes=vc.num_classes, vae_ch=spec.vae_ch)
        vae, var = _build(shape, device, dtype, init=False)   # weights come from the files
        load_into(var, sd, what=spec.var_ckpt)
        load_into(vae, read_state_dict(spec.vae_ckpt, sha256=spec.vae_sha256), what=spec.vae_ckpt)
    else:
        from ..var.init import quantization_test_init_

        shape = spec
        vae, var = _build(spec, device, dtype)
        quantization_test_init_(var, seed=spec.init_seed, outlier_channels=spec.outlier_channels)
    return vae.eval(), var.eval(), shape


def _build(shape: ModelSpec, device, dtype, init: bool = True):
    from ..var import build_vae_var

    torch.manual_seed(shape.init_seed)
    return build_vae_var(device=device, patch_nums=shape.patch_nums, V=shape.vocab_size,
                         ch=shape.vae_ch, num_classes=shape.num_classes, depth=shape.depth,
                         shared_aln=shape.shared_aln, dtype=dtype, init=init)


def rebuild(shape: ModelSpec, vae_ckpt: str | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32):
    """``(vae, var)`` of architecture ``shape`` for loading a saved quantized VAR.

    The VAR weights are placeholders (the caller loads the saved state dict);
    the VQVAE comes from ``vae_ckpt`` or, without one, is the same random VQVAE
    :func:`build_models` made from ``shape.init_seed``.
    """
    from ..var import load_into, read_state_dict

    # without a VQVAE file the random VQVAE must be re-drawn exactly: full init then
    vae, var = _build(shape, device, dtype, init=vae_ckpt is None)
    if vae_ckpt is not None:
        load_into(vae, read_state_dict(vae_ckpt), what=str(vae_ckpt))
    return vae.eval(), var.eval()


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s state dict: what a
    resumed run compares to know it continues with the very same model."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

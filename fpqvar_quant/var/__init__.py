"""VAR transformer and multi-scale VQVAE in pure PyTorch, with the official
(FoundationVision/VAR) module names, buffers and semantics.

    from fpqvar_quant.var import build_vae_var, load_checkpoint
    vae, var = build_vae_var(device="cpu", depth=16, init=False)  # init=False: weights come from the files
    load_checkpoint(vae, "vae_ch160v4096z32.pth"); load_checkpoint(var, "var_d16.pth")
    imgs = var.eval().autoregressive_infer_cfg(B=4, label_B=torch.tensor([0, 1, 2, 3]), g_seed=0,
                                               cfg=1.5, top_k=900, top_p=0.96)
"""
from .basic import AdaLNBeforeHead, AdaLNSelfAttn, FFN, KVQuantizer, SelfAttention
from .builder import OFFICIAL_DEPTHS, PATCH_NUMS_256, PATCH_NUMS_512, build_vae_var
from .checkpoint import (CheckpointError, CheckpointMismatchError, StateDictReport, VarConfig, check_state_dict,
                         infer_var_config, load_checkpoint, load_into, read_state_dict)
from .init import quantization_test_init_
from .helpers import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from .quant import VectorQuantizer2
from .var import VAR, SampleResult, SamplingStep
from .vqvae import VQVAE

__all__ = [
    "AdaLNBeforeHead", "AdaLNSelfAttn", "FFN", "KVQuantizer", "SelfAttention",
    "OFFICIAL_DEPTHS", "PATCH_NUMS_256", "PATCH_NUMS_512", "build_vae_var",
    "CheckpointError", "CheckpointMismatchError", "StateDictReport", "VarConfig", "check_state_dict",
    "infer_var_config", "load_checkpoint", "load_into", "read_state_dict",
    "quantization_test_init_", "gumbel_softmax_with_rng", "sample_with_top_k_top_p_", "VectorQuantizer2",
    "VAR", "SampleResult", "SamplingStep", "VQVAE",
]

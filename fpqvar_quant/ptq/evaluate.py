"""FID / IS / precision / recall of a folder of PNG samples against an ADM
reference batch (``VIRTUAL_imagenet256_labeled.npz`` layout).

Reference batch: an ``.npz`` with ``arr_0`` (``uint8 [N, H, W, 3]`` images) and,
in the ADM release, the pool-3 statistics ``mu`` / ``sigma`` (and spatial
``mu_s`` / ``sigma_s``, unused here).

Features come from torch-fidelity's Inception-V3 port of the TF-FID network
(``FeatureExtractorInceptionV3``, 2048-d pool features and 1008-way unbiased
logits) - the same network as the ADM evaluator's TF graph. torch-fidelity is
an optional dependency and its weights file
``weights-inception-2015-12-05-6726825d.pth`` must already be on disk (pass
its path, or put it in ``$TORCH_HOME/hub/checkpoints``); this module never
downloads anything. When either is missing, :class:`EvaluatorUnavailable` is
raised with instructions (the CLI turns it into exit status 2).

Metrics (the ADM evaluator's definitions, computed here in numpy/torch):

* FID: ``|mu_s - mu_r|^2 + tr(S_s + S_r - 2 (S_s S_r)^(1/2))``; the reference
  statistics are the ``mu``/``sigma`` stored in the batch when present (as the
  ADM evaluator does), otherwise computed from ``arr_0``.
* IS: ``exp(E_x KL(p(y|x) || p(y)))`` averaged over splits of 5000 samples.
* Precision / recall: k-NN manifolds (k = 3) of pool features
  (Kynkaanniemi et al. 2019): precision = share of samples inside some
  reference ball, recall = share of references inside some sample ball.

Numbers from torch-fidelity features are close to, not bit-identical with,
the TF evaluator's; report them as such.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["EvaluatorUnavailable", "Metrics", "fid_from_stats", "inception_score",
           "precision_recall", "load_reference_batch", "list_sample_pngs", "evaluate_folder",
           "INCEPTION_WEIGHTS_NAME", "find_weights"]

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


class EvaluatorUnavailable(RuntimeError):
    """The Inception feature extractor cannot run on this machine (message says why/how)."""


@dataclass(frozen=True)
class Metrics:
    fid: float
    inception_score: float
    precision: float
    recall: float
    num_samples: int
    num_reference: int

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ metric math
def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                   eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians (ADM / pytorch-fid formula, float64)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics shapes differ: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """IS from classifier logits ``[N, classes]`` (softmax in float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _kth_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    r = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        r.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself (distance 0)
    return torch.cat(r)


def _inside_any(q: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    hit = []
    for i in range(0, len(q), chunk):
        d = torch.cdist(q[i:i + chunk], centers)
        hit.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(hit).double().mean())


def precision_recall(ref_feats: np.ndarray, sample_feats: np.ndarray, k: int = 3,
                     chunk: int = 2048) -> tuple[float, float]:
    """k-NN precision and recall (ADM evaluator's ManifoldEstimator, k = 3)."""
    r = torch.as_tensor(np.asarray(ref_feats), dtype=torch.float64)
    s = torch.as_tensor(np.asarray(sample_feats), dtype=torch.float64)
    if len(r) <= k or len(s) <= k:
        raise ValueError(f"precision/recall need more than k={k} samples per set")
    rr, rs = _kth_radii(r, k, chunk), _kth_radii(s, k, chunk)
    return _inside_any(s, r, rr, chunk), _inside_any(r, s, rs, chunk)


# ------------------------------------------------------------------ inputs
def load_reference_batch(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ADM reference batch; returns ``{"images", "mu"?, "sigma"?}``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reference batch {p} not found (ADM's "
                                "VIRTUAL_imagenet256_labeled.npz or the same layout)")
    with np.load(p) as z:
        if "arr_0" not in z.files:
            raise ValueError(f"{p} has no 'arr_0' image array (keys: {z.files}); "
                             "expected the ADM reference-batch layout")
        out = {"images": z["arr_0"]}
        if "mu" in z.files and "sigma" in z.files:
            out["mu"], out["sigma"] = z["mu"], z["sigma"]
    imgs = out["images"]
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise ValueError(f"arr_0 must be uint8 [N, H, W, 3], got {imgs.dtype} {imgs.shape}")
    return out


def list_sample_pngs(folder: str | Path) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"sample folder {d} not found")
    files = sorted(d.rglob("*.png"))
    if not files:
        raise ValueError(f"no .png files under {d}; generate them with `fpqvar-quant sample`")
    return files


def find_weights(weights: str | Path | None) -> Path:
    """The Inception-V3 weights file: ``weights`` when given, else the torch hub checkpoint;
    :class:`EvaluatorUnavailable` (with what to do) when it is not on this machine."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise EvaluatorUnavailable(f"Inception weights {p} not found")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
    if p.is_file():
        return p
    raise EvaluatorUnavailable(
        f"the Inception-V3 (TF-FID) weights are not on this machine (looked for {p}).\n"
        f"Download {INCEPTION_WEIGHTS_NAME} from the torch-fidelity releases "
        "(https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        f"{INCEPTION_WEIGHTS_NAME}) and pass --inception-weights PATH or place it in "
        f"{p.parent}. Nothing is downloaded automatically.")


def _extractor(weights: str | Path | None, device: str):
    try:
        from torch_fidelity import FeatureExtractorInceptionV3
    except ImportError as e:
        raise EvaluatorUnavailable(
            "torch-fidelity is not installed; install it with `pip install 'fpqvar[eval]'` "
            "(or `pip install torch-fidelity==0.4.0`) "
            "(it provides the TF-FID Inception-V3 port used by the ADM-compatible metrics)") from e
    path = find_weights(weights)
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(path))
    return fe.eval().to(device)


def _features(fe, batches, device: str, total: int, desc: str, progress: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    pool, logits = [], []
    with torch.no_grad(), tqdm(total=total, desc=desc, disable=not progress, unit="img") as bar:
        for b in batches:
            x = torch.as_tensor(b).permute(0, 3, 1, 2).contiguous().to(device)  # uint8 NCHW
            f, lg = fe(x)
            pool.append(f.double().cpu().numpy())
            logits.append(lg.double().cpu().numpy())
            bar.update(len(b))
    return np.concatenate(pool), np.concatenate(logits)


def evaluate_folder(samples: str | Path, reference: str | Path, *,
                    inception_weights: str | Path | None = None, batch_size: int = 100,
                    device: str = "cpu", progress: bool = True) -> Metrics:
    """All four metrics for the PNGs under ``samples`` against ``reference``."""
    from PIL import Image

    files = list_sample_pngs(samples)
    ref = load_reference_batch(reference)
    fe = _extractor(inception_weights, device)

    def sample_batches():
        for i in range(0, len(files), batch_size):
            yield np.stack([np.asarray(Image.open(f).convert("RGB")) for f in
                            files[i:i + batch_size]])

    def ref_batches():
        for i in range(0, len(ref["images"]), batch_size):
            yield ref["images"][i:i + batch_size]

    s_pool, s_logits = _features(fe, sample_batches(), device, len(files), "samples", progress)
    r_pool, _ = _features(fe, ref_batches(), device, len(ref["images"]), "reference", progress)
    mu_r, sig_r = (ref["mu"], ref["sigma"]) if "mu" in ref else feature_stats(r_pool)
    mu_s, sig_s = feature_stats(s_pool)
    prec, rec = precision_recall(r_pool, s_pool)
    return Metrics(fid=fid_from_stats(mu_s, sig_s, mu_r, sig_r),
                   inception_score=inception_score(s_logits), precision=prec, recall=rec,
                   num_samples=len(files), num_reference=len(ref["images"]))

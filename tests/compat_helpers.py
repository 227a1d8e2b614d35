"""NumPy references for tests/test_compat.py: written from JaxPruner's, BMRPruner's and IVON's
definitions, independently of `bmr_eqx` (no call into the library here)."""

import math

import numpy as np


def np_topk(scores, sparsity):
    """JaxPruner's unstructured top-k: keep `max(1, round(n·(1−s)))` highest scores, ties to the
    lower flat index (sparsity 0 keeps all)."""
    scores = np.asarray(scores, np.float64)
    flat = scores.reshape(-1)
    k = flat.size if sparsity == 0 else max(1, int(round(flat.size * (1 - sparsity))))
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    return keep.reshape(scores.shape).astype(np.uint8)


def np_global_topk(score_list, sparsity):
    """One top-k over the concatenation of the flattened scores; one mask per input."""
    flat = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in score_list])
    keep = np_topk(flat, sparsity)
    out, start = [], 0
    for s in score_list:
        n = np.size(s)
        out.append(keep[start : start + n].reshape(np.shape(s)))
        start += n
    return out


def np_delta_f(mu, h, ess, wd):
    """ΔF of switching each weight off: ½·log1p(h/δ) − ½·λ·(h+δ)·μ²."""
    mu, h = np.asarray(mu, np.float64), np.asarray(h, np.float64)
    return 0.5 * np.log1p(h / wd) - 0.5 * ess * (h + wd) * mu**2


def np_sigma(h, ess, wd):
    """IVON's posterior standard deviation 1/sqrt(λ(h+δ))."""
    return 1.0 / np.sqrt(ess * (np.asarray(h, np.float64) + wd))


def np_ivon_step(m, g, h, g_hat, h_hat, t, lr, b1, b2, wd, clip=math.inf, refresh=True):
    """One IVON step (t = the new step count, from 1): returns (m, g, h) afterwards.

    g ← b1·g + (1−b1)·ĝ;  h ← b2·h + (1−b2)·ĥ + ½(1−b2)²(h−ĥ)²/(h+δ);
    m ← m − α·clip((g/(1−b1^t) + δ·m)/(h+δ))."""
    m, g, h, g_hat, h_hat = (np.asarray(a, np.float64) for a in (m, g, h, g_hat, h_hat))
    g = b1 * g + (1 - b1) * g_hat
    if refresh:
        h = b2 * h + (1 - b2) * h_hat + 0.5 * (1 - b2) ** 2 * (h - h_hat) ** 2 / (h + wd)
    step = (g / (1 - b1**t) + wd * m) / (h + wd)
    return m - lr * np.clip(step, -clip, clip), g, h


def np_erk(shapes, sparsity):
    """ERK as JaxPruner defines it: density ∝ sum(shape)/prod(shape), the kept count that of a
    uniform allocation (n − ⌊s·n⌋ per layer), saturated layers dense and the rest rescaled."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / math.prod(s) for k, s in shapes.items()}
    kept = sum(n - math.floor(sparsity * n) for n in sizes.values())
    dense = set()
    while True:
        rest = [k for k in shapes if k not in dense]
        eps = (kept - sum(sizes[k] for k in dense)) / sum(raw[k] * sizes[k] for k in rest)
        over = [k for k in rest if eps * raw[k] > 1]
        if not over:
            break
        worst = max(raw[k] for k in over)
        dense |= {k for k in rest if raw[k] == worst}
    return {k: 0.0 if k in dense else 1 - eps * raw[k] for k in shapes}


def unpack(mask, shape):
    """A `jnp.packbits` mask back to a 0/1 uint8 array of `shape` (NumPy's unpackbits)."""
    n = math.prod(shape)
    return np.unpackbits(np.asarray(mask))[:n].reshape(shape)

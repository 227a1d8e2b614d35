"""Sparsity summaries, keyed by leaf path."""

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._select import PyTree, leaves_with_paths
from ._sparse import Sparse, find_sparse, mask_leaves


def _masks_by_path(model: PyTree) -> dict[str, Array]:
    sparse = find_sparse(model)
    return {p: m for p, _, m in mask_leaves(sparse.model, sparse.masks) if m is not None}


def sparsity_summary(model: PyTree) -> dict[str, Float[Array, ""]]:
    """Fraction of pruned entries of every prunable leaf (keyed by path, e.g. `layers[0].weight`)
    and over all of them (key `"total"`).

    **Arguments:** `model`: a `Sparse` (or a `Posterior` of one).
    """
    masks = _masks_by_path(model)
    out = {p: 1.0 - jnp.mean(m) for p, m in masks.items()}
    size = sum(m.size for m in masks.values())
    out["total"] = 1.0 - sum(jnp.sum(m) for m in masks.values()) / size
    return out


def mask_intersection(a: PyTree, b: PyTree) -> dict[str, Float[Array, ""]]:
    """Per prunable leaf, the fraction of `a`'s kept entries that `b` keeps too, and the same over
    all leaves (key `"total"`). 1.0 means `b` keeps everything `a` keeps.

    **Arguments:** `a`, `b`: two `Sparse` models (or Posteriors of them) with the same structure.
    """
    ma, mb = _masks_by_path(a), _masks_by_path(b)
    if ma.keys() != mb.keys():
        raise ValueError(f"The two models have different prunable leaves: {sorted(ma)} vs {sorted(mb)}.")
    both = {p: jnp.sum(ma[p] & mb[p]) for p in ma}
    kept = {p: jnp.sum(ma[p]) for p in ma}
    out = {p: both[p] / jnp.maximum(kept[p], 1) for p in ma}
    out["total"] = sum(both.values()) / jnp.maximum(sum(kept.values()), 1)
    return out

"""Sparsity summaries keyed by leaf path, and classification metrics of (posterior) predictions."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._sites import find_sites, join_path, no_sparse_error
from ._tree import PyTree


def masks_by_path(model: PyTree) -> dict[str, Array]:
    """Every mask of every `Sparse` in `model`, keyed by plain path from the root."""
    sites = find_sites(model)
    if not sites:
        raise no_sparse_error(model)
    return {join_path(s.prefix, k): m for s in sites for k, m in s.sparse.masks.items()}


def sparsity_summary(model: PyTree) -> dict[str, Float[Array, ""]]:
    """Fraction of pruned entries of every prunable leaf (keyed by path, e.g. `layers[0].weight`)
    and over all of them (key `"total"`).

    **Arguments:** `model`: any pytree holding `Sparse` models (a `Sparse`, a `Posterior` of one, a
    module with a `Sparse` part, a tuple of models). Paths leave out the wrappers' own hops
    (`Sparse.model`, `Posterior.mean`): an MLP's first weight is `layers[0].weight` in a `Sparse`
    and in a `Posterior(Sparse(...))` alike.

    **Returns:** a dict from path to the fraction of pruned entries (a JAX scalar).
    """
    masks = masks_by_path(model)
    out = {p: jnp.sum(~m) / m.size for p, m in masks.items()}
    size = sum(m.size for m in masks.values())
    out["total"] = sum(jnp.sum(~m) for m in masks.values()) / size
    return out


def mask_intersection(a: PyTree, b: PyTree) -> dict[str, Float[Array, ""]]:
    """Per prunable leaf, the fraction of `a`'s kept entries that `b` keeps too, and the same over
    all leaves (key `"total"`). 1.0 means `b` keeps everything `a` keeps.

    **Arguments:** `a`, `b`: two models holding `Sparse` models with the same prunable leaves.

    **Returns:** a dict from path to the fraction (a JAX scalar).
    """
    ma, mb = masks_by_path(a), masks_by_path(b)
    if ma.keys() != mb.keys():
        raise ValueError(f"The two models have different prunable leaves: {sorted(ma)} vs {sorted(mb)}.")
    both = {p: jnp.sum(ma[p] & mb[p]) for p in ma}
    kept = {p: jnp.sum(ma[p]) for p in ma}
    out = {p: both[p] / jnp.maximum(kept[p], 1) for p in ma}
    out["total"] = sum(both.values()) / jnp.maximum(sum(kept.values()), 1)
    return out


def accuracy(probs: Float[ArrayLike, "batch classes"], labels: Int[ArrayLike, " batch"]) -> Float[Array, ""]:
    """Fraction of examples whose most probable class is the label (works on logits too).

    **Arguments:** `probs` (or logits) of shape `(batch, classes)`; integer `labels`.

    **Returns:** a scalar.
    """
    return jnp.mean(jnp.argmax(probs, -1) == jnp.asarray(labels))


def nll(probs: Float[ArrayLike, "batch classes"], labels: Int[ArrayLike, " batch"]) -> Float[Array, ""]:
    """Mean negative log-likelihood `−log p(label)` of predicted probabilities (clipped at 1e-12).

    **Arguments:** `probs` of shape `(batch, classes)`; integer `labels`.

    **Returns:** a scalar.
    """
    picked = jnp.take_along_axis(jnp.asarray(probs), jnp.asarray(labels)[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.clip(picked, 1e-12, 1.0)))


def expected_calibration_error(
    probs: Float[ArrayLike, "batch classes"], labels: Int[ArrayLike, " batch"], num_bins: int = 15
) -> Float[Array, ""]:
    """Expected calibration error with `num_bins` equal-width confidence bins:
    `Σ_b (n_b / N)·|accuracy_b − confidence_b|`, confidence = the top probability.

    **Arguments:** `probs` of shape `(batch, classes)`; integer `labels`; `num_bins`.

    **Returns:** a scalar.
    """
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")
    probs = jnp.asarray(probs)
    conf = jnp.max(probs, -1)
    correct = (jnp.argmax(probs, -1) == jnp.asarray(labels)).astype(conf.dtype)
    bins = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)  # (i/B, (i+1)/B]
    gap = jnp.zeros(num_bins).at[bins].add(correct) - jnp.zeros(num_bins).at[bins].add(conf)
    return jnp.sum(jnp.abs(gap)) / probs.shape[0]


def classification_metrics(
    probs: Float[ArrayLike, "batch classes"], labels: Int[ArrayLike, " batch"], num_bins: int = 15
) -> dict[str, Float[Array, ""]]:
    """`{"accuracy", "nll", "ece"}` of predicted probabilities, e.g. of `posterior.predict(...)`.

    **Arguments:** as for `expected_calibration_error`.

    **Returns:** a dict of scalars.
    """
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "ece": expected_calibration_error(probs, labels, num_bins),
    }

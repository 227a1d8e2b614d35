"""Pruning algorithms: a score plus the shared machinery (distribution, schedule, scores -> masks)."""

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from ._bmr import spike_and_slab_mask
from ._distributions import Distribution, check_distribution, check_sparsity, leaf_sparsities
from ._masks import (
    AbstractSparsityType,
    Channel,
    Unstructured,
    global_topk_masks,
    keep_best,
    NByM,
    sparsity_type as as_sparsity_type,
    threshold_mask,
    topk_mask,
)
from ._posterior import Posterior
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule
from ._scores import evidence_score, magnitude_score, normalize_score, random_score, saliency_score, signal_to_noise_score
from ._select import PyTree
from ._sparse import Sparse, find_sparse, mask_leaves, replace_sparse


def _model_grads(grads: PyTree, sparse: Sparse) -> PyTree:
    """Gradients shaped like `sparse.model`, from grads of the Sparse (or its Posterior) or of the model."""
    if grads is None:
        return None
    inner = getattr(grads, "mean", grads)
    inner = inner.model if isinstance(inner, Sparse) else inner
    try:
        return jax.tree.structure(sparse.model).flatten_up_to(inner)
    except (ValueError, TypeError):
        raise ValueError(
            "grads does not have the structure of the model; pass the gradients of the Sparse model, e.g. "
            "`eqx.filter_grad(loss)(model)`."
        ) from None


def _bias_partners(leaves: list["Leaf"], stype: Channel) -> dict[int, int]:
    """{index of a weight leaf: index of its prunable bias} for leaves `X.weight` / `X.bias` whose
    bias has one entry per channel."""
    by_path = {l.path: j for j, l in enumerate(leaves)}
    out = {}
    for j, leaf in enumerate(leaves):
        if leaf.path.endswith("weight") and leaf.weight.ndim >= 1:
            b = by_path.get(leaf.path[: -len("weight")] + "bias")
            channels = leaf.weight.shape[stype.axis % leaf.weight.ndim]
            if b is not None and leaves[b].weight.size == channels:
                out[j] = b
    return out


def _as_distribution(distribution: Distribution) -> Distribution:
    """A private copy of a custom map (so later edits of the caller's dict change nothing)."""
    return dict(distribution) if isinstance(distribution, Mapping) else distribution


class Leaf(NamedTuple):
    """What a score function sees of one prunable leaf.

    - `path`: e.g. `"layers[0].weight"`; `weight`: the (mean) weight with pruned entries at 0;
      `mask`: its current mask; `grad`: its gradient (None unless `grads=` was given);
      `key`: a PRNG key for this leaf (None unless `key=` was given);
      `hess`, `ess`, `weight_decay`: the posterior's curvature and prior (None unless the model is a
      `Posterior`).
    """

    path: str
    weight: Array
    mask: Array
    grad: Array | None = None
    key: PRNGKeyArray | None = None
    hess: Array | None = None
    ess: float | None = None
    weight_decay: float | None = None


class AbstractPruner(eqx.Module):
    """Base of every pruning algorithm. A concrete pruner only defines `score(leaf) -> scores`.

    **Fields (every pruner):**

    - `sparsity`: the final fraction of pruned weights in `[0, 1)` (None for N:M, where `n/m` fixes
      it, for evidence thresholds, or when a custom distribution gives every leaf's sparsity).
    - `distribution`: `"uniform"` (every leaf at `sparsity`), `"erk"` (Erdős–Rényi-kernel), `"global"`
      (one ranking across all leaves), or a dict `{leaf path: sparsity or None}`; leaves missing from
      the dict get `sparsity`, leaves mapped to None stay dense.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, an `"N:M"` string such as `"2:4"`,
      or an `Unstructured()` / `NByM(n, m, axis)` / `Block(shape, pool)` / `Channel(axis)`.
    - `schedule`: when masks are recomputed and at which sparsity; default `OneShotSchedule(0)`.
    - `monotone`: a pruned weight is never revived (its score is `-inf` at the next update).
    - `normalize`: divide each leaf's scores by their L2 norm before a global ranking.
    """

    sparsity: float | int | None = None
    distribution: Distribution = eqx.field(default="uniform", converter=_as_distribution)
    sparsity_type: AbstractSparsityType = eqx.field(default="unstructured", converter=as_sparsity_type)
    schedule: AbstractSchedule = OneShotSchedule(0)
    monotone: bool = False
    normalize: bool = False

    needs_grads: ClassVar[bool] = False
    needs_key: ClassVar[bool] = False
    needs_posterior: ClassVar[bool] = False
    selects_by_target: ClassVar[bool] = True

    def __check_init__(self):
        check_sparsity(self.sparsity)
        check_distribution(self.distribution)
        if self.distribution == "global" and not isinstance(self.sparsity_type, Unstructured):
            raise ValueError(
                f"distribution='global' ranks single weights across leaves and needs sparsity_type='unstructured', "
                f"got {self.sparsity_type!r}."
            )
        needs_target = self.selects_by_target and self.sparsity_type.needs_target
        if needs_target and self.sparsity is None and not isinstance(self.distribution, Mapping):
            raise ValueError(f"{type(self).__name__} needs a target: pass sparsity=<float in [0, 1)>.")

    @abc.abstractmethod
    def score(self, leaf: Leaf) -> Array:
        """Scores of one leaf, shaped like `leaf.weight` (higher = keep)."""

    def select(self, group_scores: Array, sparsity: Any) -> Array:
        """Which groups of one leaf to keep: the top `1 − sparsity` of them (data-driven pruners
        such as `AdaptiveBMR` replace this rule and ignore `sparsity`)."""
        return topk_mask(group_scores, sparsity)

    # ---- the shared machinery -------------------------------------------------------------------

    def _leaves(self, model: PyTree, grads: PyTree, key: PRNGKeyArray | None) -> list[Leaf]:
        sparse = find_sparse(model)
        entries = mask_leaves(sparse.model, sparse.masks)
        flat_grads = _model_grads(grads, sparse)
        name = type(self).__name__
        if self.needs_grads and flat_grads is None:
            raise ValueError(f"{name} scores with gradients: pass grads=eqx.filter_grad(loss)(model).")
        if self.needs_key and key is None:
            raise ValueError(f"{name} needs a PRNG key: pass key=jax.random.key(...).")
        post = model if isinstance(model, Posterior) else None
        if self.needs_posterior and post is None:
            raise TypeError(
                f"{name} scores a posterior: wrap the model as `bmr_eqx.Posterior(bmr_eqx.Sparse(model), ess=...)` "
                "and train it with bmr_eqx.ivon."
            )
        flat_hess = None if post is None else jax.tree.structure(sparse.model).flatten_up_to(post.hess.model)
        idx = [i for i, (_, _, m) in enumerate(entries) if m is not None]
        keys = list(jax.random.split(key, len(idx))) if self.needs_key else [None] * len(idx)
        leaves = []
        for i, k in zip(idx, keys):
            path, w, m = entries[i]
            g = None if flat_grads is None else flat_grads[i]
            if self.needs_grads and g is None:
                raise ValueError(f"grads has no gradient for the prunable leaf `{path}`.")
            leaves.append(
                Leaf(
                    path, jnp.where(m, w, jnp.zeros((), w.dtype)), m, g, k,
                    None if flat_hess is None else flat_hess[i],
                    None if post is None else post.ess,
                    None if post is None else post.weight_decay,
                )
            )
        return leaves

    def _new_masks(self, model: PyTree, sparsity_at: Any, grads: PyTree, key: PRNGKeyArray | None) -> list[Array]:
        """New masks of the prunable leaves of the `Sparse` in `model`, in flattening order, each
        leaf at `sparsity_at(its target)`."""
        leaves = self._leaves(model, grads, key)
        scores = []
        for leaf in leaves:
            s = self.score(leaf)
            if self.normalize:
                s = normalize_score(s)
            scores.append(jnp.where(leaf.mask, s, -jnp.inf) if self.monotone else s)
        if self.distribution == "global":
            return global_topk_masks(scores, sparsity_at(self.sparsity))
        return self._per_leaf_masks(leaves, scores, sparsity_at)

    def _per_leaf_masks(self, leaves: list[Leaf], scores: list[Array], sparsity_at: Any) -> list[Array]:
        stype = self.sparsity_type
        targets = leaf_sparsities({l.path: tuple(l.weight.shape) for l in leaves}, self.sparsity, self.distribution)
        # A prunable bias joins its weight's channels: its scores add to theirs and it shares their fate.
        partner = _bias_partners(leaves, stype) if isinstance(stype, Channel) else {}
        new: list[Array | None] = [None] * len(leaves)
        for j, (leaf, s) in enumerate(zip(leaves, scores)):
            if j in partner.values():
                continue
            shape = tuple(leaf.weight.shape)
            stype.check(shape, leaf.path)
            target = targets[leaf.path]
            if not stype.needs_target:
                new[j] = stype.mask(s, 0.0, leaf.path)
            elif target is None and self.selects_by_target:
                new[j] = jnp.ones(shape, bool)
            else:
                groups = stype.group(s)
                if j in partner:
                    groups = groups + scores[partner[j]].reshape(groups.shape)
                keep = self.select(groups, None if target is None else sparsity_at(target))
                new[j] = stype.expand(keep, shape)
                if j in partner:
                    new[partner[j]] = keep.reshape(leaves[partner[j]].weight.shape)
        for j, leaf in enumerate(leaves):  # biases whose weight was left dense
            if new[j] is None:
                new[j] = jnp.ones(leaf.weight.shape, bool)
        return new

    def update(
        self,
        model: PyTree,
        step: int | Int[ArrayLike, ""],
        *,
        grads: PyTree = None,
        key: PRNGKeyArray | None = None,
    ) -> PyTree:
        """Recompute the masks if the schedule says so at `step`; otherwise return `model` unchanged.

        Works inside `eqx.filter_jit` with a traced `step` (the recomputation runs under `lax.cond`).
        Only the masks change: the forward pass sees newly pruned weights as exactly 0 at once, and
        `masked_updates` sets their stored values to exactly 0 at its next step.

        **Arguments:**

        - `model`: a `Sparse` (or a `Posterior` of one).
        - `step`: the training step; pass a JAX integer inside `filter_jit` so it does not recompile.
        - `grads`: gradients of `model` (needed by gradient-based scores such as saliency).
        - `key`: a PRNG key (needed by random scores).

        **Returns:** the model with new masks (same structure).
        """
        sparse = find_sparse(model)
        step = jnp.asarray(step)
        do = self.schedule.is_update_step(step)
        flat_old = [m for _, _, m in mask_leaves(sparse.model, sparse.masks) if m is not None]

        def recompute():
            return self._new_masks(model, lambda t: self.schedule.sparsity(step, t), grads, key)

        # Only the masks go through lax.cond: carrying the weights too costs a copy every step.
        if isinstance(do, jax.core.Tracer):
            flat_new = jax.lax.cond(do, recompute, lambda: flat_old)
        else:
            flat_new = recompute() if bool(do) else flat_old
        return replace_sparse(model, _with_masks(sparse, flat_new, zero_weights=False))

    def prune(self, model: PyTree, *, grads: PyTree = None, key: PRNGKeyArray | None = None) -> PyTree:
        """One-shot pruning to the final target sparsity, ignoring the schedule.

        **Arguments:**

        - `model`: a trained model; wrapped in `Sparse(model)` (default prunable leaves) if it is not
          already a `Sparse` (or a `Posterior` of one).
        - `grads`, `key`: as for `update`.

        **Returns:** the `Sparse` model (or the `Posterior` of one) with masks applied and pruned
        weights set to exactly 0.
        """
        if isinstance(model, Posterior) and not isinstance(model.mean, Sparse):
            raise TypeError("Prune a Posterior of a Sparse model: `Posterior(Sparse(model), ess=...)`.")
        if not isinstance(model, (Sparse, Posterior)):
            model = Sparse(model)
        sparse = find_sparse(model)
        masks = self._new_masks(model, lambda t: t, grads, key)
        return replace_sparse(model, _with_masks(sparse, masks, zero_weights=True))


def _with_masks(sparse: Sparse, masks: list[Array], zero_weights: bool) -> Sparse:
    """`sparse` with the prunable leaves' masks replaced (and, with `zero_weights`, the pruned
    entries of the wrapped model's weights set to exactly 0)."""
    treedef = jax.tree.structure(sparse.model)
    flat_w = jax.tree.leaves(sparse.model)
    flat_m = treedef.flatten_up_to(sparse.masks)
    new = iter(masks)
    for i, m in enumerate(flat_m):
        if m is not None:
            flat_m[i] = next(new)
            if zero_weights:
                flat_w[i] = jnp.where(flat_m[i], flat_w[i], jnp.zeros((), flat_w[i].dtype))
    model = treedef.unflatten(flat_w) if zero_weights else sparse.model
    return eqx.tree_at(lambda s: (s.model, s.masks), sparse, (model, treedef.unflatten(flat_m)))


class NoPruning(AbstractPruner):
    """The dense baseline: masks stay all-ones (same interface as every pruner)."""

    sparsity: float | int | None = 0.0
    schedule: AbstractSchedule = NoUpdateSchedule()

    def score(self, leaf: Leaf) -> Array:
        return jnp.ones_like(leaf.weight)


class MagnitudePruning(AbstractPruner):
    """Prune the weights of smallest magnitude |w|."""

    def score(self, leaf: Leaf) -> Array:
        return magnitude_score(leaf.weight)


class SaliencyPruning(AbstractPruner):
    """Prune the weights of smallest saliency |w·∂L/∂w| (pass `grads=` to `update`/`prune`)."""

    needs_grads: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return saliency_score(leaf.weight, leaf.grad)


class RandomPruning(AbstractPruner):
    """Prune random weights (pass `key=` to `update`/`prune`); pruned weights never come back."""

    monotone: bool = True
    needs_key: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return random_score(leaf.key, leaf.weight.shape)


class GlobalMagnitudePruning(AbstractPruner):
    """Magnitude pruning with one ranking across all prunable leaves (scores L2-normalised per leaf
    by default, as in JaxPruner)."""

    distribution: Distribution = eqx.field(default="global", converter=_as_distribution)
    normalize: bool = True

    def score(self, leaf: Leaf) -> Array:
        return magnitude_score(leaf.weight)


class GlobalSaliencyPruning(AbstractPruner):
    """Saliency pruning with one ranking across all prunable leaves (scores L2-normalised per leaf
    by default, as in JaxPruner)."""

    distribution: Distribution = eqx.field(default="global", converter=_as_distribution)
    normalize: bool = True
    needs_grads: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return saliency_score(leaf.weight, leaf.grad)


# ---- posterior-based pruners (BMR.md) -------------------------------------------------------------


def _evidence(leaf: Leaf) -> Array:
    return evidence_score(leaf.weight, leaf.hess, leaf.ess, leaf.weight_decay)


class BMRPruning(AbstractPruner):
    """Bayesian model reduction with a target: per leaf (uniform, ERK or a custom map), keep the
    weights whose removal costs the most evidence (rank by −ΔF of the spike reduced prior). With
    `sparsity_type="channel"`, whole neurons/filters are ranked by their group ΔF (the sum over
    their incoming weights, plus their bias when the bias is prunable). Needs a `Posterior` model.
    Monotone by default: a pruned weight stays pruned."""

    monotone: bool = True
    needs_posterior: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return _evidence(leaf)


class GlobalBMRPruning(AbstractPruner):
    """Bayesian model reduction with one ranking of raw ΔF across all leaves. ΔF is in nats in
    every layer, so no per-layer normalisation is applied. Needs a `Posterior` model."""

    distribution: Distribution = eqx.field(default="global", converter=_as_distribution)
    monotone: bool = True
    needs_posterior: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return _evidence(leaf)


BayesianGlobalPruning = GlobalBMRPruning
"""The BMRPruner fork's name for `GlobalBMRPruning` (one global ranking by ΔF)."""


class SteBMRPruning(AbstractPruner):
    """BMR with straight-through masks: pruned weights keep receiving gradients and may come back
    when their ΔF drops. Needs `Posterior(Sparse(model, straight_through=True), ...)`; recompute
    the masks often (e.g. `PeriodicSchedule(every=1)`)."""

    needs_posterior: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return _evidence(leaf)

    def _new_masks(self, model: PyTree, sparsity_at: Any, grads: PyTree, key: PRNGKeyArray | None) -> list[Array]:
        if not find_sparse(model).straight_through:
            raise ValueError(
                "SteBMRPruning needs straight-through masks: build the model as "
                "`Posterior(Sparse(model, straight_through=True), ...)`."
            )
        return super()._new_masks(model, sparsity_at, grads, key)


class AdaptiveBMR(AbstractPruner):
    """Bayesian model reduction without a target: the evidence decides the sparsity.

    `method="threshold"` prunes every weight (or, with `sparsity_type="channel"` or a `Block`, every
    group, by its group ΔF) with `ΔF > threshold` (0: Bayes factor 1); `method="spike_and_slab"`
    fits a per-leaf inclusion rate by the spike-and-slab fixed point and prunes where `ΔF > ζ`.
    The best weight (group) of each leaf is always kept. Monotone by default. Needs a `Posterior`.
    """

    threshold: float = 0.0
    method: str = "threshold"
    monotone: bool = True
    needs_posterior: ClassVar[bool] = True
    selects_by_target: ClassVar[bool] = False

    def __init__(
        self,
        threshold: float | int = 0.0,
        method: str = "threshold",
        *,
        sparsity_type: AbstractSparsityType | str = "unstructured",
        schedule: AbstractSchedule = OneShotSchedule(0),
        monotone: bool = True,
    ):
        if method not in ("threshold", "spike_and_slab"):
            raise ValueError(f"AdaptiveBMR method must be 'threshold' or 'spike_and_slab', got {method!r}.")
        stype = as_sparsity_type(sparsity_type)
        if isinstance(stype, NByM):
            raise ValueError("AdaptiveBMR lets the evidence set the sparsity; N:M fixes it. Use BMRPruning for N:M.")
        self.threshold = float(threshold)
        self.method = method
        self.sparsity = None
        self.distribution = "uniform"
        self.sparsity_type = stype
        self.schedule = schedule
        self.monotone = monotone
        self.normalize = False

    def score(self, leaf: Leaf) -> Array:
        return _evidence(leaf)

    def select(self, group_scores: Array, sparsity: Any) -> Array:
        if self.method == "threshold":
            keep = threshold_mask(group_scores, -self.threshold)  # score = −ΔF: keep iff ΔF ≤ T
        else:
            keep = spike_and_slab_mask(-group_scores)
        return keep_best(keep, group_scores)


class UncertaintyMagnitudePruning(AbstractPruner):
    """Prune by signal-to-noise |μ|/σ: small and uncertain weights go first. Needs a `Posterior`."""

    needs_posterior: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return signal_to_noise_score(leaf.weight, leaf.hess, leaf.ess, leaf.weight_decay)


class PosteriorVariancePruning(AbstractPruner):
    """Prune the weights the data informed least first: those whose posterior precision
    λ(h + δ) stayed nearest the prior's λδ (largest posterior variance). Needs a `Posterior`."""

    needs_posterior: ClassVar[bool] = True

    def score(self, leaf: Leaf) -> Array:
        return leaf.hess

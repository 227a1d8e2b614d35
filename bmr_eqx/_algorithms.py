"""Pruning algorithms: a score plus the shared machinery (distribution, schedule, scores -> masks)."""

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._distributions import Distribution, check_distribution, check_sparsity, leaf_sparsities
from ._masks import AbstractSparsityType, Unstructured, global_topk_masks, sparsity_type as as_sparsity_type
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule
from ._scores import magnitude_score, normalize_score, random_score, saliency_score
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


def _freeze(distribution: Distribution) -> Distribution:
    return dict(distribution) if isinstance(distribution, Mapping) else distribution


class AbstractPruner(eqx.Module):
    """Base of every pruning algorithm. A concrete pruner only defines `score`.

    **Fields (every pruner):**

    - `sparsity`: the final fraction of pruned weights in `[0, 1)` (None for N:M, where `n/m` fixes
      it, or when a custom distribution gives every leaf's sparsity).
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
    distribution: Distribution = eqx.field(default="uniform", converter=_freeze)
    sparsity_type: AbstractSparsityType = eqx.field(default="unstructured", converter=as_sparsity_type)
    schedule: AbstractSchedule = OneShotSchedule(0)
    monotone: bool = False
    normalize: bool = False

    def __check_init__(self):
        check_sparsity(self.sparsity)
        check_distribution(self.distribution)
        if self.distribution == "global" and not isinstance(self.sparsity_type, Unstructured):
            raise ValueError(
                f"distribution='global' ranks single weights across leaves and needs sparsity_type='unstructured', "
                f"got {self.sparsity_type!r}."
            )
        needs_target = self.sparsity_type.fixed_sparsity is None and not isinstance(self.distribution, Mapping)
        if needs_target and self.sparsity is None:
            raise ValueError(f"{type(self).__name__} needs a target: pass sparsity=<float in [0, 1)>.")

    @abc.abstractmethod
    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        """Scores of one leaf (higher = keep). `weight` is the masked weight."""

    needs_grads: ClassVar[bool] = False
    needs_key: ClassVar[bool] = False

    # ---- the shared machinery -------------------------------------------------------------------

    def masks_for(self, model: PyTree, sparsity_at: Any, *, grads: PyTree = None, key: PRNGKeyArray | None = None) -> PyTree:
        """New masks for the `Sparse` in `model`, each leaf at `sparsity_at(target)`, as a masks tree."""
        sparse = find_sparse(model)
        entries = [(p, w, m) for p, w, m in mask_leaves(sparse.model, sparse.masks)]
        flat_grads = _model_grads(grads, sparse)
        if self.needs_grads and flat_grads is None:
            raise ValueError(f"{type(self).__name__} scores with gradients: pass grads=eqx.filter_grad(loss)(model).")
        if self.needs_key and key is None:
            raise ValueError(f"{type(self).__name__} needs a PRNG key: pass key=jax.random.key(...).")
        idx = [i for i, (_, _, m) in enumerate(entries) if m is not None]
        keys = list(jax.random.split(key, len(idx))) if self.needs_key else [None] * len(idx)
        scores = []
        for i, k in zip(idx, keys):
            path, w, m = entries[i]
            g = None if flat_grads is None else flat_grads[i]
            if self.needs_grads and g is None:
                raise ValueError(f"grads has no gradient for the prunable leaf `{path}`.")
            s = self.score(jnp.where(m, w, 0), g, k)
            if self.normalize:
                s = normalize_score(s)
            scores.append(jnp.where(m, s, -jnp.inf) if self.monotone else s)
        if self.distribution == "global":
            new = global_topk_masks(scores, sparsity_at(self.sparsity))
        else:
            shapes = {entries[i][0]: tuple(entries[i][1].shape) for i in idx}
            targets = leaf_sparsities(shapes, self.sparsity, self.distribution)
            new = []
            for i, s in zip(idx, scores):
                path, w, _ = entries[i]
                self.sparsity_type.check(tuple(w.shape), path)
                target = targets[path]
                if self.sparsity_type.fixed_sparsity is not None:
                    new.append(self.sparsity_type.mask(s, 0.0, path))
                elif target is None:
                    new.append(jnp.ones(w.shape, bool))
                else:
                    new.append(self.sparsity_type.mask(s, sparsity_at(target), path))
        flat = [m for _, _, m in entries]
        for i, m in zip(idx, new):
            flat[i] = m
        return jax.tree.structure(sparse.model).unflatten(flat)

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
        flat_old = _prunable_masks(sparse, sparse.masks)

        def recompute():
            masks = self.masks_for(model, lambda t: self.schedule.sparsity(step, t), grads=grads, key=key)
            return _prunable_masks(sparse, masks)

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
        if not isinstance(model, Sparse) and not isinstance(getattr(model, "mean", None), Sparse):
            model = Sparse(model)
        sparse = find_sparse(model)
        masks = self.masks_for(model, lambda t: t, grads=grads, key=key)
        return replace_sparse(model, _with_masks(sparse, _prunable_masks(sparse, masks), zero_weights=True))


def _prunable_masks(sparse: Sparse, masks: PyTree) -> list[Array]:
    """The masks of the prunable leaves as a flat list of arrays (what `lax.cond` carries)."""
    return [m for m in jax.tree.structure(sparse.model).flatten_up_to(masks) if m is not None]


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

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return jnp.ones_like(weight)


class MagnitudePruning(AbstractPruner):
    """Prune the weights of smallest magnitude |w|."""

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return magnitude_score(weight)


class SaliencyPruning(AbstractPruner):
    """Prune the weights of smallest saliency |w·∂L/∂w| (pass `grads=` to `update`/`prune`)."""

    needs_grads: ClassVar[bool] = True

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return saliency_score(weight, grad)


class RandomPruning(AbstractPruner):
    """Prune random weights (pass `key=` to `update`/`prune`); pruned weights never come back."""

    monotone: bool = True
    needs_key: ClassVar[bool] = True

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return random_score(key, weight.shape)


class GlobalMagnitudePruning(AbstractPruner):
    """Magnitude pruning with one ranking across all prunable leaves (scores L2-normalised per leaf
    by default, as in JaxPruner)."""

    distribution: Distribution = eqx.field(default="global", converter=_freeze)
    normalize: bool = True

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return magnitude_score(weight)


class GlobalSaliencyPruning(AbstractPruner):
    """Saliency pruning with one ranking across all prunable leaves (scores L2-normalised per leaf
    by default, as in JaxPruner)."""

    distribution: Distribution = eqx.field(default="global", converter=_freeze)
    normalize: bool = True
    needs_grads: ClassVar[bool] = True

    def score(self, weight: Array, grad: Array | None, key: PRNGKeyArray | None) -> Array:
        return saliency_score(weight, grad)

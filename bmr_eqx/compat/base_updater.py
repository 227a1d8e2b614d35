"""JaxPruner's updater: masks live in the optimizer state (`SparseState`), next to the wrapped
optimizer's own state. Scores, top-k and schedules are `bmr_eqx`'s."""

import dataclasses
import functools
import logging
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from .._scores import Leaf
from . import mask_calculator, sparsity_distributions, sparsity_schedules, sparsity_types
from ._tree import is_none, map_with_keys

FilterFnType = sparsity_distributions.FilterFnType
TopkFnType = mask_calculator.TopKFnType
CustomSparsityMapType = sparsity_distributions.CustomSparsityMapType
SparsityDistributionFnType = Any


class SparseState(NamedTuple):
    """The masks (uint8, or packed bits; None = not pruned), the wrapped optimizer's state, the
    target sparsities and the step count."""

    masks: Any
    inner_state: Any = None
    target_sparsities: Any = None
    count: Any = None


@functools.partial(jax.jit, static_argnums=2)
def apply_mask(param, mask, is_packed=False):
    """`param` with the entries where `mask` is 0 set to 0 (`mask` None: unchanged; `is_packed`:
    `mask` holds `jnp.packbits` of the mask)."""
    if mask is None:
        return param
    if is_packed:
        mask = jnp.unpackbits(mask)[: param.size].reshape(param.shape)
    return jnp.where(mask.astype(bool), param, jnp.zeros((), jnp.result_type(param)))


def _pack(masks):
    return jax.tree.map(jnp.packbits, masks)


_DEFAULT_DISTRIBUTION = functools.partial(sparsity_distributions.uniform, sparsity=0.0)


def _is_uniform_at(fn, sparsity) -> bool:
    """Whether `fn` is `partial(uniform, sparsity=sparsity)` (what `sparsity=` stands for)."""
    return (isinstance(fn, functools.partial) and fn.func is sparsity_distributions.uniform and not fn.args
            and fn.keywords == {"sparsity": sparsity})


@dataclasses.dataclass
class BaseUpdater:
    """The common updater: `wrap_optax` adds masks to an optax optimizer's state and recomputes
    them on the `scheduler`'s update steps from `calculate_scores`; `instant_sparsify` prunes
    once; `pre_forward_update` / `post_gradient_update` transform the parameters around a step.

    `sparsity=s` is shorthand for `sparsity_distribution_fn=functools.partial(uniform, sparsity=s)`.
    """

    scheduler: Any = sparsity_schedules.NoUpdateSchedule()
    skip_gradients: bool = False
    is_sparse_gradients: bool = False
    sparsity_type: Any = sparsity_types.Unstructured()
    sparsity_distribution_fn: Optional[SparsityDistributionFnType] = _DEFAULT_DISTRIBUTION
    rng_seed: Optional[jax.Array] = None
    use_packed_masks: bool = False
    topk_fn: Optional[TopkFnType] = None
    sparsity: Optional[float] = None

    # The global pruners read `sparsity` themselves.
    _sparsity_is_global = False

    def __post_init__(self):
        if self.topk_fn is None:
            self.topk_fn = mask_calculator.get_topk_fn(self.sparsity_type)
        if self.rng_seed is None:
            self.rng_seed = jax.random.PRNGKey(8)
        if self.sparsity is not None and not self._sparsity_is_global:
            if self.sparsity_distribution_fn is not _DEFAULT_DISTRIBUTION and not _is_uniform_at(
                self.sparsity_distribution_fn, self.sparsity
            ):
                raise ValueError(
                    f"{type(self).__name__} got both sparsity= and sparsity_distribution_fn=; give one "
                    "(sparsity=s means functools.partial(sparsity_distributions.uniform, sparsity=s))."
                )
            self.sparsity_distribution_fn = functools.partial(sparsity_distributions.uniform, sparsity=self.sparsity)

    # ---- masks ---------------------------------------------------------------------------------

    def apply_masks(self, params, masks, is_packed=None):
        """`params` with every masked entry set to 0 (None masks leave a parameter alone).
        `is_packed` defaults to `use_packed_masks`."""
        if is_packed is None:
            is_packed = self.use_packed_masks
        return jax.tree.map(functools.partial(apply_mask, is_packed=is_packed), params, masks)

    def calculate_scores(self, params, sparse_state=None, grads=None, **kwargs):
        """The scores of every parameter (higher = kept); each algorithm defines its own."""
        raise NotImplementedError(f"{type(self).__name__} does not define calculate_scores.")

    def get_initial_masks(self, params, target_sparsities):
        """All-ones uint8 masks for the parameters with a target sparsity, None for the others."""

        def ones(p, target):
            return None if target is None else jnp.ones(jnp.shape(p), mask_calculator.MASK_DTYPE)

        return jax.tree.map(ones, params, target_sparsities)

    def create_masks(self, scores, sparsities):
        """`topk_fn(score, sparsity)` for every score with a sparsity (None: no mask)."""

        def topk(key, score, sparsity):
            if sparsity is None or score is None:
                return None
            try:
                return self.topk_fn(score, sparsity)
            except ValueError as e:
                raise ValueError(
                    f"Parameter {key} of shape {jnp.shape(score)}: {e} Leave it out with filter_fn (or "
                    "custom_sparsity_map), or choose a sparsity type that fits it."
                ) from None

        return map_with_keys(topk, scores, sparsities)

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self, params):
        """A `SparseState` with the initial masks and the target sparsities."""
        targets = None if self.sparsity_distribution_fn is None else self.sparsity_distribution_fn(params)
        logging.info("target_sparsities: %s", targets)
        masks = self.get_initial_masks(params, targets)
        if self.use_packed_masks:
            masks = _pack(masks)
        return SparseState(masks=masks, target_sparsities=targets, count=jnp.zeros([], jnp.int32))

    def update_state(self, sparse_state, params, grads, **kwargs):
        """New masks from the current scores at the scheduled sparsity."""
        sparsities = self.scheduler.get_sparsity_at_step(sparse_state.target_sparsities, sparse_state.count)
        scores = self.calculate_scores(params, sparse_state=sparse_state, grads=grads, **kwargs)
        masks = self.create_masks(scores, sparsities)
        if self.use_packed_masks:
            masks = _pack(masks)
        return sparse_state._replace(masks=masks)

    def wrap_optax(self, inner):
        """`inner` with masks added to its state: on the scheduler's update steps the masks are
        recomputed (`update_state`, which receives the extra keyword arguments of `update`); with
        `is_sparse_gradients` the updates are masked; with `skip_gradients` the update steps make
        no parameter update."""

        def init_fn(params):
            return self.init_state(params)._replace(inner_state=inner.init(params))

        def update_fn(updates, state, params=None, **kwargs):
            is_update_step = self.scheduler.is_mask_update_iter(state.count)
            if is_update_step is not False:  # NoUpdateSchedule says a plain False: nothing to trace
                state = jax.lax.cond(
                    is_update_step,
                    functools.partial(self.update_state, **kwargs),
                    lambda s, *_: s,
                    state,
                    params,
                    updates,
                )
            if self.is_sparse_gradients:
                updates = self.apply_masks(updates, state.masks, is_packed=self.use_packed_masks)

            def skip(updates, inner_state, params):
                return jax.tree.map(jnp.zeros_like, updates), inner_state

            updates, inner_state = jax.lax.cond(
                jnp.logical_and(is_update_step, self.skip_gradients), skip, inner.update, updates, state.inner_state,
                params,
            )
            return updates, state._replace(count=optax.safe_int32_increment(state.count), inner_state=inner_state)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def instant_sparsify(self, params, grads=None, **kwargs):
        """Prune `params` once at the distribution's sparsities: returns `(pruned params, masks)`."""
        if self.sparsity_distribution_fn is None:
            raise ValueError("sparsity_distribution_fn needs to be provided for sparsification.")
        sparsities = self.sparsity_distribution_fn(params)
        scores = self.calculate_scores(params, grads=grads, **kwargs)
        masks = self.create_masks(scores, sparsities)
        pruned = self.apply_masks(params, masks, is_packed=False)
        return pruned, (_pack(masks) if self.use_packed_masks else masks)

    def pre_forward_update(self, params, opt_state):
        """The parameters the forward pass sees (default: `params`)."""
        del opt_state
        return params

    def post_gradient_update(self, params, sparse_state):
        """The parameters after an optimizer step: masked entries back to 0."""
        return self.apply_masks(params, sparse_state.masks, is_packed=self.use_packed_masks)


@dataclasses.dataclass
class NoPruning(BaseUpdater):
    """Keeps the parameters dense (None masks)."""

    sparsity_distribution_fn: Optional[SparsityDistributionFnType] = None

    def get_initial_masks(self, params, target_sparsities):
        del target_sparsities
        return jax.tree.map(lambda _: None, params, is_leaf=is_none)

    def update_state(self, sparse_state, params, grads, **kwargs):
        return sparse_state

    def instant_sparsify(self, params, grads=None, **kwargs):
        return params, self.get_initial_masks(params, None)


def leafwise_scores(score, params, grads=None, keys=None, **posterior):
    """Scores of `bmr_eqx` score object `score` for every array leaf of `params` (None stays None):
    each leaf is seen as a `bmr_eqx.Leaf` with its gradient, PRNG key and posterior statistics."""
    treedef = jax.tree.structure(params, is_leaf=is_none)
    leaves = treedef.flatten_up_to(params)

    def column(tree):
        return [None] * len(leaves) if tree is None else treedef.flatten_up_to(tree)

    grads_, keys_ = column(grads), column(keys)
    hess = column(posterior.get("hess"))
    out = []
    for i, p in enumerate(leaves):
        if p is None:
            out.append(None)
            continue
        p = jnp.asarray(p)
        leaf = Leaf(path=str(i), weight=p, mask=None, grad=grads_[i], key=keys_[i], hess=hess[i],
                    ess=posterior.get("ess"), weight_decay=posterior.get("weight_decay"))
        out.append(score(leaf))
    return treedef.unflatten(out)

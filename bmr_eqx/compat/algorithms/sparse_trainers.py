"""JaxPruner's sparse training: static random masks, SET and RigL (drop and grow)."""

import dataclasses
import functools
import re
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ... import _scores
from ..._optim import reset_moments
from .._tree import is_none
from ..base_updater import BaseUpdater, _pack, leafwise_scores
from . import pruners


@dataclasses.dataclass
class StaticRandomSparse(BaseUpdater):
    """Random masks drawn once at `init`, fixed for the whole training (sparse gradients)."""

    is_sparse_gradients: bool = True

    def update_state(self, sparse_state, params, grads, **kwargs):
        del params, grads
        return sparse_state

    def get_initial_masks(self, params, target_sparsities):
        return self.create_masks(pruners.generate_random_scores(params, self.rng_seed), target_sparsities)

    def instant_sparsify(self, params, grads=None, **kwargs):
        raise RuntimeError("instant_sparsify function is not supported in sparse training methods.")


def _restart_using_mask(target_tree, masks):
    """`target_tree` with the entries where `masks` is 1 set to 0 (None masks: unchanged)."""
    return jax.tree.map(lambda a, m: a if m is None else a * (1 - m), target_tree, masks)


def restart_inner_state(state, masks_activated, params=None):
    """`state` (any optax state) with the per-parameter moments of the newly activated connections
    set to 0 (`bmr_eqx`'s moment reset: adam, sgd momentum, lion, chains, masked states, IVON's
    momentum; IVON's curvature is kept).

    `masks_activated` is a tree shaped like the parameters (bool leaves; None: leave alone). Pass
    `params` to have every other array of the state checked to be a known parameter's moment.
    """
    reference = masks_activated if params is None else params
    items, treedef = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_none)
    grown = treedef.flatten_up_to(masks_activated)
    named = {
        jax.tree_util.keystr(kp): (jnp.shape(x), None if g is None else jnp.asarray(g, bool))
        for (kp, x), g in zip(items, grown)
        if x is not None
    }
    return reset_moments(state, named, strict=params is not None, keep=_is_curvature)


def _is_curvature(key: str) -> bool:
    """An IVON state's curvature (`hess`, `h_bar`) is no moment: a regrown weight keeps it."""
    return re.search(r"\.(hess|h_bar)(\W|$)", key) is not None


@dataclasses.dataclass
class SET(StaticRandomSparse):
    """Sparse evolutionary training: at every update, drop the `drop_fraction_fn(step)` smallest
    active weights and regrow as many at random. Optimizer moments of regrown weights restart at 0.

    Attributes: `eps` (score margin), `drop_fraction_fn(step)`, `is_debug` (check the masks).
    """

    eps: float = 1e-5
    drop_fraction_fn: Callable[[int], float] = lambda _: 0.3
    is_debug: bool = False
    skip_gradients: bool = True

    def _update_masks(self, old_mask, drop_score, grow_score, drop_fraction):
        """Drop the lowest `drop_fraction` of the active entries by `drop_score`, then grow back to
        the old density by `grow_score` (the kept entries first)."""
        density = jnp.sum(old_mask) / old_mask.size
        lowest = jnp.min(drop_score) - self.eps
        dropped = self.topk_fn(jnp.where(old_mask == 0, lowest, drop_score), 1 - density * (1 - drop_fraction))
        highest = jnp.max(grow_score) + self.eps
        updated = self.topk_fn(jnp.where(dropped == 1, highest, grow_score), 1 - density)
        if self.is_debug:
            updated = eqx.error_if(updated, jnp.any((dropped == 1) & (old_mask == 0)), "dropping grew a connection")
            updated = eqx.error_if(updated, jnp.any((dropped == 1) & (updated == 0)), "growing lost a kept connection")
        return updated

    def _get_drop_scores(self, sparse_state, params, grads):
        return pruners.MagnitudePruning.calculate_scores(self, params)

    def _get_grow_scores(self, sparse_state, params, grads):
        return pruners.generate_random_scores(params, jax.random.fold_in(self.rng_seed, sparse_state.count))

    def update_state(self, sparse_state, params, grads, **kwargs):
        masks = sparse_state.masks
        if self.use_packed_masks:
            masks = jax.tree.map(
                lambda m, p: None if m is None else jnp.unpackbits(m)[: jnp.size(p)].reshape(jnp.shape(p)),
                masks, params, is_leaf=is_none,
            )
        drop = self._get_drop_scores(sparse_state, params, grads)
        grow = self._get_grow_scores(sparse_state, params, grads)
        update = functools.partial(self._update_masks, drop_fraction=self.drop_fraction_fn(sparse_state.count))

        def new_mask(mask, d, g):
            return None if mask is None else update(mask, d, g)

        new = jax.tree.map(new_mask, masks, drop, grow, is_leaf=is_none)
        activated = jax.tree.map(
            lambda old, m: None if old is None else (old == 0) & (m == 1), masks, new, is_leaf=is_none
        )
        inner = restart_inner_state(sparse_state.inner_state, activated, params)
        return sparse_state._replace(masks=_pack(new) if self.use_packed_masks else new, inner_state=inner)


@dataclasses.dataclass
class RigL(SET):
    """Rigged lottery: like SET, but regrows the inactive weights with the largest gradient."""

    def _get_grow_scores(self, sparse_state, params, grads):
        return leafwise_scores(_scores.GradientMagnitude(), params, grads=grads)



"""Optimizer integration: keep pruned weights exactly zero under any optax optimizer."""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from ._schedules import AbstractSchedule
from ._select import PyTree, is_none
from ._sparse import Sparse
from ._trainable import trainable


def mask_tree(params: PyTree) -> PyTree:
    """A tree shaped like `params` holding, at each weight inside a `Sparse`, that weight's mask
    (None everywhere else, and inside straight-through `Sparse` models, whose pruned weights keep
    training). Lines masks up with gradients and updates of the whole model."""

    def at(node: Any) -> Any:
        if not isinstance(node, Sparse):
            return None
        if node.straight_through:
            return jax.tree.map(lambda _: None, node)
        nones = jax.tree.map(lambda _: None, node.masks, is_leaf=is_none)
        return eqx.tree_at(lambda s: (s.model, s.masks), node, (node.masks, nones), is_leaf=is_none)

    return jax.tree.map(at, params, is_leaf=lambda x: isinstance(x, Sparse))


def _select(tree: PyTree, params: PyTree, pruned: Any) -> PyTree:
    """`tree` with the entries of pruned weights replaced by `pruned(value, weight)`."""
    return jax.tree.map(
        lambda u, m, w: u if (u is None or m is None) else jnp.where(m, u, pruned(u, w)),
        tree,
        mask_tree(params),
        params,
        is_leaf=is_none,
    )


def mask_gradients(grads: PyTree, params: PyTree) -> PyTree:
    """`grads` with the entries of pruned weights set to exactly 0.

    **Arguments:**

    - `grads`: a tree shaped like `bmr_eqx.trainable(params)` (None where not trainable).
    - `params`: the model, masks included.
    """
    return _select(grads, params, lambda g, w: jnp.zeros((), g.dtype))


def mask_updates(updates: PyTree, params: PyTree) -> PyTree:
    """`updates` such that `eqx.apply_updates(params, updates)` leaves every pruned weight at
    exactly 0 (its update is `-w`: 0 for a weight already at 0) and moves the others as given.

    **Arguments:**

    - `updates`: a tree shaped like `bmr_eqx.trainable(params)` (None where not trainable).
    - `params`: the model, masks included.
    """
    return _select(updates, params, lambda u, w: -w)


class MaskedUpdatesState(NamedTuple):
    inner: optax.OptState
    count: Int[Array, ""]


def masked_updates(
    optimizer: optax.GradientTransformation,
    *,
    zero_gradients: bool = False,
    skip_schedule: AbstractSchedule | None = None,
) -> optax.GradientTransformation:
    """Wrap an optax optimizer so pruned weights stay exactly 0.

    The wrapped optimizer reads the masks from `params`, which must be the model itself (masks
    included), and passes only `bmr_eqx.trainable(params)` to `optimizer`. Its updates of pruned
    weights bring them to exactly 0 and keep them there, so momentum and weight decay never move
    a pruned weight (the stored weights of the `Sparse` then equal its masked weights).

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation`.
    - `zero_gradients`: also zero the gradients of pruned weights before `optimizer` sees them
      (they are already 0 for a `Sparse`'s forward pass; this matters for straight-through scores).
    - `skip_schedule`: a schedule (usually `pruner.schedule`); on its update steps the optimizer
      step is skipped (zero updates, state unchanged). Steps are counted from 0 by the wrapper.

    **Returns:** an `optax.GradientTransformation`; call `init(model)` and
    `update(grads, state, model)`.
    """

    def init_fn(params: PyTree) -> MaskedUpdatesState:
        return MaskedUpdatesState(optimizer.init(trainable(params)), jnp.zeros((), jnp.int32))

    def update_fn(updates: PyTree, state: MaskedUpdatesState, params: PyTree = None) -> tuple[PyTree, MaskedUpdatesState]:
        if params is None:
            raise ValueError("masked_updates reads the masks from params: call update(grads, state, model).")
        if zero_gradients:
            updates = mask_gradients(updates, params)
        train = trainable(params)

        def step():
            new, inner = optimizer.update(updates, state.inner, train)
            return mask_updates(new, params), inner

        if skip_schedule is None:
            new, inner = step()
        else:
            skip = lambda: (mask_updates(jax.tree.map(jnp.zeros_like, updates), params), state.inner)  # noqa: E731
            new, inner = jax.lax.cond(skip_schedule.is_update_step(state.count), skip, step)
        return new, MaskedUpdatesState(inner, state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)

"""Optimizer integration: keep pruned weights exactly zero under any optax optimizer."""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from ._schedules import AbstractSchedule
from ._select import PyTree
from ._sparse import Sparse
from ._trainable import trainable


def _is_none(x: Any) -> bool:
    return x is None


def mask_tree(params: PyTree) -> PyTree:
    """A tree shaped like `params` holding, at each weight inside a `Sparse`, that weight's mask
    (None everywhere else). Lines masks up with gradients and updates of the whole model."""

    def at(node: Any) -> Any:
        if not isinstance(node, Sparse):
            return None
        nones = jax.tree.map(lambda _: None, node.masks, is_leaf=_is_none)
        return eqx.tree_at(lambda s: (s.model, s.masks), node, (node.masks, nones), is_leaf=_is_none)

    return jax.tree.map(at, params, is_leaf=lambda x: isinstance(x, Sparse))


def mask_updates(updates: PyTree, params: PyTree) -> PyTree:
    """`updates` (or gradients) with the entries of pruned weights set to exactly 0.

    **Arguments:**

    - `updates`: a tree shaped like `bmr_eqx.trainable(params)` (None where not trainable).
    - `params`: the model, masks included.
    """
    return jax.tree.map(
        lambda u, m: u if (u is None or m is None) else jnp.where(m, u, jnp.zeros((), u.dtype)),
        updates,
        mask_tree(params),
        is_leaf=_is_none,
    )


class MaskedUpdatesState(NamedTuple):
    inner: optax.OptState
    count: Int[Array, ""]


def masked_updates(
    optimizer: optax.GradientTransformation,
    *,
    mask_gradients: bool = False,
    skip_schedule: AbstractSchedule | None = None,
) -> optax.GradientTransformation:
    """Wrap an optax optimizer so pruned weights stay exactly 0.

    The wrapped optimizer reads the masks from `params`, which must be the model itself (masks
    included), and passes only `bmr_eqx.trainable(params)` to `optimizer`. Its updates of pruned
    weights are set to 0, so momentum and weight decay never move a pruned weight.

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation`.
    - `mask_gradients`: also zero the gradients of pruned weights before `optimizer` sees them
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
        if mask_gradients:
            updates = mask_updates(updates, params)
        train = trainable(params)

        def step():
            new, inner = optimizer.update(updates, state.inner, train)
            return mask_updates(new, params), inner

        if skip_schedule is None:
            new, inner = step()
        else:
            skip = lambda: (jax.tree.map(jnp.zeros_like, updates), state.inner)  # noqa: E731
            new, inner = jax.lax.cond(skip_schedule.is_update_step(state.count), skip, step)
        return new, MaskedUpdatesState(inner, state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)

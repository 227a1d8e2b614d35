"""Optimizer integration: keep pruned weights exactly zero under any optax optimizer."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from ._schedules import AbstractSchedule
from ._tree import (
    PyTree,
    flatten_like_trainable,
    keep_pruned_at_zero,
    trainable,
    trainable_params,
    unflatten_like_trainable,
)


def mask_gradients(grads: PyTree, model: PyTree) -> PyTree:
    """`grads` with the entries of pruned weights set to exactly 0.

    **Arguments:**

    - `grads`: a tree shaped like `bmr_eqx.trainable(model)` (None where not trainable), e.g. from
      `eqx.filter_grad`.
    - `model`: the model, masks included: any pytree holding `Sparse` models.

    **Returns:** `grads` with the same structure.
    """
    ps = trainable_params(model)
    flat = flatten_like_trainable(model, grads, "grads")
    out = [g if (g is None or p.mask is None) else jnp.where(p.mask, g, jnp.zeros((), g.dtype)) for p, g in zip(ps, flat)]
    return unflatten_like_trainable(model, out)


def zero_pruned_updates(updates: PyTree, model: PyTree) -> PyTree:
    """`updates` such that `eqx.apply_updates(model, updates)` leaves every pruned weight at exactly
    0 and moves the others as given."""
    ps = trainable_params(model)
    return unflatten_like_trainable(model, keep_pruned_at_zero(ps, flatten_like_trainable(model, updates, "updates")))


class MaskedUpdatesState(NamedTuple):
    """`inner`: the wrapped optimizer's state; `count`: steps taken (for `skip_schedule`)."""

    inner: optax.OptState
    count: Int[Array, ""]


def masked_updates(
    optimizer: optax.GradientTransformation,
    *,
    zero_gradients: bool = False,
    skip_schedule: AbstractSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap an optax optimizer so pruned weights stay exactly 0.

    The wrapped optimizer reads the masks from `params`, which must be the model itself (masks
    included; any pytree holding `Sparse` models), and passes only `bmr_eqx.trainable(params)` to
    `optimizer`. Its updates of pruned weights bring them to exactly 0 and keep them there, so
    momentum and weight decay never move a pruned weight. Extra arguments of `update` (such as
    `value=` for `optax.contrib.reduce_on_plateau`) are passed on to `optimizer`.

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation`.
    - `zero_gradients`: also zero the gradients of pruned weights before `optimizer` sees them
      (they are already 0 for a `Sparse`'s forward pass; this matters for straight-through models).
    - `skip_schedule`: a schedule (usually `pruner.schedule`); on its update steps the optimizer
      step is skipped (zero updates, state unchanged). Steps are counted from 0 by the wrapper.

    **Returns:** an `optax.GradientTransformationExtraArgs`; call `init(model)` and
    `update(grads, state, model, **extra_args)`.
    """
    inner_tx = optax.with_extra_args_support(optimizer)

    def init_fn(params: PyTree) -> MaskedUpdatesState:
        return MaskedUpdatesState(inner_tx.init(trainable(params)), jnp.zeros((), jnp.int32))

    def update_fn(
        updates: PyTree, state: MaskedUpdatesState, params: PyTree = None, **extra_args: Any
    ) -> tuple[PyTree, MaskedUpdatesState]:
        if params is None:
            raise ValueError("masked_updates reads the masks from params: call update(grads, state, model).")
        if zero_gradients:
            updates = mask_gradients(updates, params)
        train = trainable(params)

        def step():
            new, inner = inner_tx.update(updates, state.inner, train, **extra_args)
            return zero_pruned_updates(new, params), inner

        if skip_schedule is None:
            new, inner = step()
        else:
            def skip():
                return zero_pruned_updates(jax.tree.map(jnp.zeros_like, updates), params), state.inner

            new, inner = jax.lax.cond(skip_schedule.is_update_step(state.count), skip, step)
        return new, MaskedUpdatesState(inner, state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

"""Optimizer integration: keep pruned weights exactly zero under any optax optimizer."""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from ._schedules import AbstractSchedule
from ._tree import (
    PyTree,
    flatten_like_trainable,
    keep_pruned_at_zero,
    nodes_on_path,
    trainable,
    trainable_params,
    unflatten_like_trainable,
    where,
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
    out = [g if (g is None or p.mask is None) else where(p.mask, g, 0) for p, g in zip(ps, flat)]
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

        new, inner = inner_tx.update(updates, state.inner, train, **extra_args)
        new = zero_pruned_updates(new, params)
        if skip_schedule is not None:
            # a select, not a lax.cond: a cond would copy the optimizer state at every step
            skip = skip_schedule.is_update_step(state.count)
            moved = zero_pruned_updates(jax.tree.map(jnp.zeros_like, new), params)
            new = jax.tree.map(lambda z, u: jnp.where(skip, z, u), moved, new)
            inner = jax.tree.map(lambda old, now: jnp.where(skip, old, now), state.inner, inner)
        return new, MaskedUpdatesState(inner, state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _key_str(path: tuple) -> str:
    return jax.tree_util.keystr(tuple(path))


def _owner_type(tree: Any, path: tuple) -> str:
    """The name of the innermost NamedTuple (an optax state type) on `path` in `tree`."""
    names = [type(n).__name__ for n in nodes_on_path(tree, path) if isinstance(n, tuple) and hasattr(n, "_fields")]
    return names[-1] if names else type(tree).__name__


def reset_regrown(opt_state: PyTree, before: PyTree, after: PyTree) -> PyTree:
    """`opt_state` with the per-parameter moments of the weights regrown between `before` and `after`
    (mask False, then True) set to 0, so they start afresh as new weights.

    Per-parameter moments are found structurally, in any optax state (adam/adamw's `mu` and `nu`,
    sgd's momentum `trace`, lion, chains, `inject_hyperparams`, `MultiSteps`' accumulated gradients,
    `multi_transform`, `masked_updates`, IVON's momentum): a floating array whose key path ends with
    a parameter's key path in `bmr_eqx.trainable(after)` (the longest such path) and that has the
    parameter's shape. So initialise the optimizer on the model you pass here (`trainable(model)`,
    or the model itself for `masked_updates` and `ivon`). Scalars (step counts, hyper-parameters)
    are left alone. A non-scalar floating array that is no parameter's moment (adafactor's factored
    moments, or the state of an optimizer initialised on part of the model) raises a `ValueError`
    naming the state type, since its regrown entries could not be reset.

    Call it after every mask update of a drop-and-grow pruner (it costs one `where` per moment);
    `before` and `after` must be the same model before and after `pruner.update`.

    **Arguments:**

    - `opt_state`: the optimizer state, e.g. from `optimizer.init(bmr_eqx.trainable(model))`.
    - `before`, `after`: the model (any pytree holding `Sparse` models) before and after the update.

    **Returns:** the optimizer state, same structure.
    """
    pb, pa = trainable_params(before), trainable_params(after)
    if [(p.path, p.leaf.shape) for p in pb] != [(p.path, p.leaf.shape) for p in pa]:
        raise ValueError("before and after must be the same model before and after pruner.update (their leaves differ).")
    full = [_key_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(trainable(after))[0]]
    grown = [None if (a.mask is None or b.mask is None) else a.mask & ~b.mask for a, b in zip(pa, pb)]
    return reset_moments(opt_state, {f: (a.leaf.shape, g) for f, a, g in zip(full, pa, grown)})


def reset_moments(
    opt_state: PyTree,
    params: Mapping[str, tuple[tuple[int, ...], Any]],
    strict: bool = True,
    keep: Callable[[str], bool] | None = None,
) -> PyTree:
    """`opt_state` with the per-parameter moments zeroed where a parameter's `grown` mask is True.

    `params` maps each parameter's key string (`jax.tree_util.keystr` of its path in the tree the
    optimizer was initialised on) to `(shape, grown)`, `grown` a bool array or None (leave alone).
    A floating array of the state is a parameter's moment when its key string ends with that
    parameter's (the longest such) and the shapes agree. With `strict`, a non-scalar floating array
    that is nobody's moment raises a `ValueError` naming the state type. Arrays whose key string
    `keep` accepts are left alone (not moments: e.g. an IVON state's curvature).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(opt_state)
    out, unmatched = [], []
    for kp, x in flat:
        s = _key_str(kp)
        if not (eqx.is_inexact_array(x) and x.ndim >= 1) or (keep is not None and keep(s)):
            out.append(x)
            continue
        match = max((n for n, (shape, _) in params.items() if s.endswith(n) and tuple(shape) == x.shape),
                    key=len, default=None)
        if match is None:
            unmatched.append(kp)
            out.append(x)
            continue
        g = params[match][1]
        out.append(x if g is None else jnp.where(g, jnp.zeros((), x.dtype), x))
    if unmatched and strict:
        where = sorted({f"{_owner_type(opt_state, kp)} at `{_key_str(kp)}`" for kp in unmatched})[:5]
        raise ValueError(
            f"reset_regrown cannot tell which parameter these optimizer-state arrays belong to: {where}. Their "
            "regrown entries would keep stale moments. Initialise the optimizer on `bmr_eqx.trainable(model)` of "
            "the model passed as before/after (for an optimizer of a sub-model, pass that sub-model before and "
            "after the update), and use one whose per-parameter state mirrors the parameters (adam, sgd with "
            "momentum, lion, ...)."
        )
    return treedef.unflatten(out)

"""`Sparse`: a model that carries its own pruning masks."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._select import PyTree, is_none, leaves_with_paths, prunable_spec


def mask_leaves(model: PyTree, masks: PyTree) -> list[tuple[str, Any, Any]]:
    """`(path, leaf, mask)` for every leaf of `model`, checking that `masks` fits it.

    Raises a `ValueError` naming the leaf path if the masks tree does not have the model's
    structure, if a mask is not a bool array, or if its shape differs from its leaf's.
    """
    treedef = jax.tree.structure(model)
    try:
        flat_masks = treedef.flatten_up_to(masks)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "The masks tree does not have the structure of the model (was one of them changed with "
            "eqx.tree_at alone?). Rebuild the masks with `Sparse(model)` or change model and masks "
            f"together. Details: {e}"
        ) from None
    out = []
    for (path, leaf), mask in zip(leaves_with_paths(model), flat_masks):
        if mask is not None:
            if not (hasattr(mask, "dtype") and hasattr(mask, "shape")):
                raise ValueError(f"Mask of `{path}` is {type(mask).__name__}, not an array; masks are bool arrays or None.")
            if mask.dtype != jnp.bool_:
                raise ValueError(
                    f"Mask of `{path}` has dtype {mask.dtype}; masks must be bool (use `mask.astype(bool)`). "
                    "Float masks would be trained and decayed by the optimizer."
                )
            if not eqx.is_inexact_array(leaf):
                raise ValueError(f"`{path}` has a mask but is not a floating array; set its mask to None.")
            if mask.shape != leaf.shape:
                raise ValueError(
                    f"Mask of `{path}` has shape {tuple(mask.shape)} but the leaf has shape {tuple(leaf.shape)}; "
                    "after changing a leaf's shape, replace its mask too (e.g. `jnp.ones(new_shape, bool)`)."
                )
        out.append((path, leaf, mask))
    return out


def apply_masks(model: PyTree, masks: PyTree) -> PyTree:
    """`model` with every masked leaf's pruned entries set to exactly 0."""
    return jax.tree.map(
        lambda m, w: w if m is None else jnp.where(m, w, jnp.zeros((), w.dtype)),
        masks,
        model,
        is_leaf=is_none,
    )


class Sparse(eqx.Module):
    """A model with pruning masks stored inside the pytree.

    `Sparse(model)` holds the wrapped model in `model` and a tree of the same structure in `masks`:
    a bool array (`True` = kept) on every prunable leaf, `None` elsewhere. Calling it calls the
    masked model, so pruned weights contribute exactly 0 and get exactly 0 gradient. Masks are bool
    arrays: `eqx.filter_value_and_grad` gives them no gradient, `bmr_eqx.trainable` and
    `eqx.is_inexact_array` keep them out of optimizer state, and changing their values inside
    `eqx.filter_jit` never recompiles.

    The stored weights of pruned entries are set to exactly 0 by `pruner.prune`, and by
    `masked_updates` / `ivon` at their first step after a `pruner.update` (which changes only the
    masks, so that nothing but the masks passes through its `lax.cond`). The forward pass sees 0
    either way.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`.
    - `filter_spec`, `where`, `filter_fn`: choose the prunable leaves (at most one). `filter_spec`
      is an Equinox filter spec; `where` is a function `model -> nodes` as for `eqx.tree_at`;
      `filter_fn(path, leaf) -> bool` sees paths like `"layers[0].weight"`. By default every
      floating array with `ndim >= 2` is prunable.
    - `masks`: start from these masks (same structure as `model`) instead of all-ones.
    - `straight_through`: the forward pass still sees pruned weights as 0, but their gradient is
      passed straight through (as if unmasked) so they keep training and may come back; optimizers
      then leave them alone (for `SteBMRPruning` and other straight-through pruners).
    """

    model: PyTree
    masks: PyTree
    straight_through: bool = eqx.field(static=True)

    def __init__(
        self,
        model: PyTree,
        *,
        filter_spec: Any = None,
        where: Callable[[PyTree], Any] | None = None,
        filter_fn: Callable[[str, Any], bool] | None = None,
        masks: PyTree = None,
        straight_through: bool = False,
    ):
        if isinstance(model, Sparse):
            raise TypeError("The model is already a Sparse; wrap the inner model or change its masks with eqx.tree_at.")
        if masks is None:
            spec = prunable_spec(model, filter_spec, where, filter_fn)
            masks = jax.tree.map(lambda leaf, p: jnp.ones(leaf.shape, bool) if p else None, model, spec)
        elif filter_spec is not None or where is not None or filter_fn is not None:
            raise TypeError("Pass either masks or a leaf selector (filter_spec/where/filter_fn), not both.")
        self.model = model
        self.masks = masks
        self.straight_through = straight_through

    def __check_init__(self):
        mask_leaves(self.model, self.masks)

    def masked(self) -> PyTree:
        """The wrapped model with its masks applied (pruned entries exactly 0)."""
        mask_leaves(self.model, self.masks)
        masked = apply_masks(self.model, self.masks)
        if not self.straight_through:
            return masked
        return jax.tree.map(
            lambda w, mw: w + jax.lax.stop_gradient(mw - w) if eqx.is_inexact_array(w) else mw, self.model, masked
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the masked model: `self.masked()(*args, **kwargs)`."""
        return self.masked()(*args, **kwargs)


def find_sparse(model: PyTree) -> Sparse:
    """The `Sparse` inside `model` (itself, or the mean of a `Posterior`)."""
    if isinstance(model, Sparse):
        return model
    inner = getattr(model, "mean", None)
    if isinstance(inner, Sparse):
        return inner
    raise TypeError(
        f"Expected a bmr_eqx.Sparse model (or a Posterior of one), got {type(model).__name__}. "
        "Wrap it first: `model = bmr_eqx.Sparse(model)`."
    )


def replace_sparse(model: PyTree, sparse: Sparse) -> PyTree:
    """`model` with its `Sparse` replaced by `sparse` (the inverse of `find_sparse`)."""
    if isinstance(model, Sparse):
        return sparse
    return eqx.tree_at(lambda m: m.mean, model, sparse)

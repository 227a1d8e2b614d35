"""`Sparse`: a model that carries its own pruning masks, keyed by leaf path."""

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._tree import AbstractWrapper, PyTree, is_wrapper, path_str, prunable_paths


def check_masks(model: PyTree, masks: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{path: leaf}` of the masked leaves of `model`, after checking that `masks` fits it.

    Raises a `ValueError` naming the path (from the root: `prefix` is the path of the `Sparse`'s
    model) if a mask names no leaf of the model, is not a bool array, or has a shape other than
    its leaf's.
    """
    where = f" (in the Sparse at `{prefix}`)" if prefix else ""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict from leaf path to bool array, got {type(masks).__name__}.")
    flat, _ = jax.tree_util.tree_flatten_with_path(model)
    leaves = {path_str(p): leaf for p, leaf in flat}
    out = {}
    for path, mask in masks.items():
        if path not in leaves:
            near = [p for p in leaves if p.endswith(path.split(".")[-1])][:5]
            raise ValueError(
                f"masks has an entry `{path}`{where}, which is no leaf of the model (leaves like it: {near}). "
                "Mask keys are leaf paths relative to the wrapped model, e.g. 'layers[0].weight'."
            )
        leaf = leaves[path]
        if not (hasattr(mask, "dtype") and hasattr(mask, "shape")):
            raise ValueError(f"Mask of `{path}`{where} is {type(mask).__name__}, not an array; masks are bool arrays.")
        if mask.dtype != jnp.bool_:
            raise ValueError(
                f"Mask of `{path}`{where} has dtype {mask.dtype}; masks must be bool (use `mask.astype(bool)`). "
                "Float masks would be trained and decayed by the optimizer."
            )
        if not eqx.is_inexact_array(leaf):
            raise ValueError(f"`{path}`{where} has a mask but is not a floating array; remove its entry from masks.")
        if mask.shape != leaf.shape:
            raise ValueError(
                f"Mask of `{path}`{where} has shape {tuple(mask.shape)} but the leaf has shape {tuple(leaf.shape)}; "
                "after changing a leaf's shape, replace its mask too (e.g. `jnp.ones(new_shape, bool)`)."
            )
        out[path] = leaf
    return out


def apply_masks(model: PyTree, masks: Mapping[str, Any], straight_through: bool = False) -> PyTree:
    """`model` with the pruned entries of every masked leaf at exactly 0. With `straight_through`,
    the gradient passes to the masked entries as if they were not masked."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    out = []
    for p, w in flat:
        m = masks.get(path_str(p))
        if m is not None:
            mw = jnp.where(m, w, jnp.zeros((), w.dtype))
            w = w + jax.lax.stop_gradient(mw - w) if straight_through else mw
        out.append(w)
    return treedef.unflatten(out)


class Sparse(AbstractWrapper):
    """A model with pruning masks stored inside the pytree.

    `Sparse(model)` holds the wrapped model in `model` and, in `masks`, a dict from the path of
    every prunable leaf (relative to `model`, e.g. `"layers[0].weight"`) to a bool array of the
    leaf's shape (`True` = kept). The masks are not a copy of the model's module tree, so
    `eqx.nn.inference_mode`, `eqx.nn.make_with_state`, `eqx.nn.Shared`, `eqx.filter_vmap` and
    `eqx.tree_serialise_leaves` see the wrapped model exactly as it is.

    Calling it calls the masked model, so pruned weights contribute exactly 0 and get exactly 0
    gradient. Masks are bool arrays: `eqx.filter_value_and_grad` gives them no gradient,
    `bmr_eqx.trainable` and `eqx.is_inexact_array` keep them out of optimizer state, and changing
    their values inside `eqx.filter_jit` never recompiles.

    The stored weights of pruned entries are set to exactly 0 by `pruner.prune`, and by
    `masked_updates` / `ivon` at their first step after a `pruner.update` (which changes the
    masks, not the weights, apart from setting regrown weights to 0). The forward pass sees 0
    either way.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`.
    - `filter_spec`, `where`, `filter_fn`: choose the prunable leaves (at most one). `filter_spec`
      is an Equinox filter spec; `where` is a function `model -> nodes` as for `eqx.tree_at`;
      `filter_fn(path, leaf) -> bool` sees paths like `"layers[0].weight"`. By default the weight
      matrices and kernels of layers are prunable (Linear, Conv, ConvTranspose, Embedding, GRU and
      LSTM cells, attention projections, scan-over-layers stacks of them; see the docs' "How it
      works" page), never biases or normalisation scales.
    - `masks`: start from these masks (`{path: bool array}`) instead of all-ones.
    - `straight_through`: the forward pass still sees pruned weights as 0, but their gradient is
      passed straight through (as if unmasked) so they keep training and may come back; optimizers
      then leave them alone (for `SteBMRPruning` and other straight-through pruners).
    """

    model: PyTree
    masks: dict[str, Any]
    straight_through: bool = eqx.field(static=True)

    def __init__(
        self,
        model: PyTree,
        *,
        filter_spec: Any = None,
        where: Callable[[PyTree], Any] | None = None,
        filter_fn: Callable[[str, Any], bool] | None = None,
        masks: Mapping[str, Any] | None = None,
        straight_through: bool = False,
    ):
        if is_wrapper(model) or any(is_wrapper(x) for x in jax.tree.leaves(model, is_leaf=is_wrapper)):
            raise TypeError(
                "The model already holds a bmr_eqx Sparse or Posterior; wrap the plain model (Sparse inside "
                "Posterior, never the other way round), or change existing masks with eqx.tree_at."
            )
        if masks is None:
            paths = prunable_paths(model, filter_spec, where, filter_fn)
            leaves = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
            masks = {p: jnp.ones(leaves[p].shape, bool) for p in paths}
        elif filter_spec is not None or where is not None or filter_fn is not None:
            raise TypeError("Pass either masks or a leaf selector (filter_spec/where/filter_fn), not both.")
        self.model = model
        self.masks = dict(masks)
        self.straight_through = straight_through

    def __check_init__(self):
        check_masks(self.model, self.masks)

    def inner(self) -> PyTree:
        return self.model

    def weight_masks(self) -> dict[str, Any]:
        return {} if self.straight_through else self.masks

    def masked(self) -> PyTree:
        """The wrapped model with its masks applied (pruned entries exactly 0)."""
        check_masks(self.model, self.masks)  # again: eqx.tree_at edits skip __check_init__
        return apply_masks(self.model, self.masks, self.straight_through)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the masked model: `self.masked()(*args, **kwargs)`."""
        return self.masked()(*args, **kwargs)

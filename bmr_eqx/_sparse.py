"""`Sparse`: a model that carries its own pruning masks, keyed by leaf path."""

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._tree import AbstractWrapper, PyTree, is_wrapper, path_str, prunable_paths, where


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


@jax.custom_jvp
def _stored_zeros(w: Any, mask: Any) -> Any:
    """`w` itself, whose pruned entries are stored as exactly 0; derivatives (forward and reverse
    mode) are 0 at the pruned entries. Costs nothing in the forward pass, unlike `jnp.where`."""
    return w


@_stored_zeros.defjvp
def _stored_zeros_jvp(primals: tuple, tangents: tuple) -> tuple:
    w, mask = primals
    dw, _ = tangents
    # the primal output goes through the rule again, so derivatives of every order see pruned weights as 0
    return _stored_zeros(w, mask), where(mask, dw, 0)


def _with_stored_zeros(model: PyTree, masks: Mapping[str, Any]) -> PyTree:
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    out = []
    for p, w in flat:
        m = masks.get(path_str(p))
        out.append(w if m is None else _stored_zeros(w, m))
    return treedef.unflatten(out)


class Sparse(AbstractWrapper):
    """A model with pruning masks stored inside the pytree.

    `Sparse(model)` holds the wrapped model in `model` and, in `masks`, a dict from the path of
    every prunable leaf (relative to `model`, e.g. `"layers[0].weight"`) to a bool array of the
    leaf's shape (`True` = kept). The masks are not a copy of the model's module tree, so
    `eqx.nn.inference_mode`, `eqx.nn.make_with_state`, `eqx.nn.Shared`, `eqx.filter_vmap` and
    `eqx.tree_serialise_leaves` see the wrapped model exactly as it is.

    Pruned weights are *stored* as exactly 0: `Sparse(model, masks=...)` sets them to 0, and so do
    the pruners (`prune`, `update`), `masked_updates` and `ivon` whenever they change masks or
    weights. Calling the model (or `s.masked()`, the same model for functions that take weights)
    therefore runs the wrapped model on its weights as they are, at the cost of a dense forward
    pass with no masking pass, and gives pruned weights exactly 0 derivatives (forward and reverse
    mode, of every order), so any optax optimizer started on the pruned model keeps them at 0 while
    the masks stay fixed (across mask updates, `masked_updates` keeps old momentum off them). To
    replace masks, or after writing weights by hand or loading a checkpoint of bmr_eqx 0.2, build
    `Sparse(s.model, masks=s.masks)` (which zeroes the pruned weights) rather than editing
    `s.masks` with `eqx.tree_at`.

    Masks are bool arrays: `eqx.filter_value_and_grad` gives them no gradient, `bmr_eqx.trainable`
    and `eqx.is_inexact_array` keep them out of optimizer state, and changing their values inside
    `eqx.filter_jit` never recompiles.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`.
    - `filter_spec`, `where`, `filter_fn`: choose the prunable leaves (at most one). `filter_spec`
      is an Equinox filter spec; `where` is a function `model -> nodes` as for `eqx.tree_at`;
      `filter_fn(path, leaf) -> bool` sees paths like `"layers[0].weight"`. By default the weight
      matrices and kernels of layers are prunable (Linear, Conv, ConvTranspose, Embedding, GRU and
      LSTM cells, attention projections, scan-over-layers stacks of them; see the docs' "How it
      works" page), never biases or normalisation scales.
    - `masks`: start from these masks (`{path: bool array}`) instead of all-ones; the pruned
      weights of `model` are set to 0 (not for a straight-through model).
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
                "Posterior, never the other way round); to replace the masks of a Sparse `s`, build `Sparse(s.model, masks=new_masks)`."
            )
        if masks is None:
            paths = prunable_paths(model, filter_spec, where, filter_fn)
            leaves = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
            masks = {p: jnp.ones(leaves[p].shape, bool) for p in paths}
        elif filter_spec is not None or where is not None or filter_fn is not None:
            raise TypeError("Pass either masks or a leaf selector (filter_spec/where/filter_fn), not both.")
        else:
            check_masks(model, masks)
            if not straight_through:
                model = apply_masks(model, masks)
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
        """The wrapped model as the forward pass sees it: pruned weights exactly 0, with exactly 0
        derivatives (for a straight-through model: the masks applied, derivatives passed through).
        Costs no pass over the weights, which store pruned entries as 0 already."""
        check_masks(self.model, self.masks)  # again: eqx.tree_at edits skip __check_init__
        if self.straight_through:
            return apply_masks(self.model, self.masks, straight_through=True)
        return _with_stored_zeros(self.model, self.masks)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the masked model: `self.masked()(*args, **kwargs)`."""
        return self.masked()(*args, **kwargs)

"""Find every `Sparse` in a user's pytree (inside `Posterior`s or any other module), and put
changed ones back."""

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax

from ._posterior import Posterior
from ._sparse import Sparse
from ._tree import PyTree, path_str


class Site(NamedTuple):
    """One `Sparse` in a tree: the `sparse` itself, the `posterior` that holds it (or None), the
    plain path `prefix` of its model from the root, the plain path `hess_prefix` of its model from
    the posterior's mean, and the `grads` of its model (None if not given)."""

    sparse: Sparse
    posterior: Posterior | None
    prefix: str
    hess_prefix: str
    grads: PyTree


def join_path(prefix: str, rel: str) -> str:
    """The path of `rel` (a path relative to a node) from the root, given the node's path `prefix`."""
    if not prefix:
        return rel
    return prefix + ("" if rel.startswith("[") else ".") + rel


def _is_site(x: Any) -> bool:
    return isinstance(x, (Sparse, Posterior))


def _model_grads(node: Any) -> Any:
    return node.model if isinstance(node, Sparse) else node


def _split(tree: PyTree, grads: PyTree, what: str) -> tuple[list, Any, list]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_site)
    if grads is None:
        flat_g = [None] * len(flat)
    else:
        try:
            flat_g = treedef.flatten_up_to(grads)
        except (ValueError, TypeError) as e:
            detail = str(e).splitlines()[0][:300]
            raise ValueError(
                f"grads does not have the structure of {what}; pass the gradients of the same tree, e.g. "
                f"`eqx.filter_grad(loss)(model)`. Details: {detail}"
            ) from None
    return flat, treedef, flat_g


def find_sites(tree: PyTree, grads: PyTree = None) -> list[Site]:
    """Every `Sparse` in `tree`, in flattening order."""
    sites = []
    flat, _, flat_g = _split(tree, grads, "the model")
    for (kp, node), g in zip(flat, flat_g):
        if isinstance(node, Sparse):
            sites.append(Site(node, None, path_str(kp), "", None if g is None else _model_grads(g)))
        elif isinstance(node, Posterior):
            inner, _, inner_g = _split(node.mean, None if g is None else g.mean, "the posterior's mean")
            for (kp2, sub), g2 in zip(inner, inner_g):
                if isinstance(sub, Sparse):
                    rel = path_str(kp2)
                    sites.append(Site(sub, node, join_path(path_str(kp), rel), rel, None if g2 is None else _model_grads(g2)))
    return sites


def replace_sites(tree: PyTree, fn: Callable[[int, Sparse], Sparse]) -> PyTree:
    """`tree` with its i-th `Sparse` (in `find_sites` order) replaced by `fn(i, sparse)`."""
    count = itertools.count()

    def swap(node: Any) -> Any:
        if isinstance(node, Sparse):
            return fn(next(count), node)
        if isinstance(node, Posterior):
            new_mean = jax.tree.map(lambda x: fn(next(count), x) if isinstance(x, Sparse) else x, node.mean,
                                    is_leaf=lambda x: isinstance(x, Sparse))
            return eqx.tree_at(lambda p: p.mean, node, new_mean)
        return node

    return jax.tree.map(swap, tree, is_leaf=_is_site)


def straight_through(tree: PyTree) -> PyTree:
    """`tree` with every `Sparse` passing gradients straight through its masks: the forward pass is
    unchanged (pruned weights are 0), but the gradient of a pruned weight is the gradient with respect
    to the masked weight, dense where the mask is 0, instead of 0.

    RigL grows weights by that gradient. Take it inside the differentiated function, so the
    gradients keep the model's own structure, and mask it for the optimizer:

        loss, dense = eqx.filter_value_and_grad(lambda m, x, y: loss_fn(bmr_eqx.straight_through(m), x, y))(model, x, y)
        grads = bmr_eqx.mask_gradients(dense, model)   # what the optimizer sees
        model = rigl.update(model, step, grads=dense)

    **Arguments:** `tree`, any pytree holding `Sparse` models (also inside a `Posterior`).

    **Returns:** the same tree, its `Sparse` models straight-through.
    """
    return replace_sites(tree, lambda _, s: s if s.straight_through else Sparse(s.model, masks=s.masks, straight_through=True))


def no_sparse_error(tree: PyTree) -> TypeError:
    return TypeError(
        f"No bmr_eqx.Sparse model found in {type(tree).__name__}. Wrap the model (or the part to prune) first: "
        "`bmr_eqx.Sparse(model)`; for a posterior, `bmr_eqx.Posterior(bmr_eqx.Sparse(model), ess=...)`."
    )


def unwrap(tree: PyTree, fn: Callable[[Sparse, str], Any], prefix: str = "") -> PyTree:
    """`tree` with every `Posterior` replaced by its mean and every `Sparse` `s` by `fn(s, path)`,
    where `path` is the raw path of `s` from the root (for messages)."""

    def each(p: Any, node: Any) -> Any:
        if not _is_site(node):
            return node
        path = join_path(prefix, path_str(p).lstrip("."))
        if isinstance(node, Posterior):
            return unwrap(node.mean, fn, join_path(path, "mean"))
        return fn(node, path)

    return jax.tree_util.tree_map_with_path(each, tree, is_leaf=_is_site)

"""Which leaves of a model are prunable, and how leaves are named (by their path)."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax

PyTree = Any


def is_none(x: Any) -> bool:
    """`is_leaf` for tree maps that must see `None` (masks and optional statistics) as a leaf."""
    return x is None


def path_str(path: Sequence[Any]) -> str:
    """The readable name of a leaf path, e.g. `layers[0].weight`."""
    return jax.tree_util.keystr(tuple(path)).lstrip(".")


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    """`(path, leaf)` pairs of a pytree in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in flat]


def is_default_prunable(leaf: Any) -> bool:
    """The default prunable leaves: floating arrays with `ndim >= 2` (weights, not biases)."""
    return eqx.is_inexact_array(leaf) and leaf.ndim >= 2


_UNSET = object()


def prunable_spec(
    model: PyTree,
    filter_spec: Any = None,
    where: Callable[[PyTree], Any] | None = None,
    filter_fn: Callable[[str, Any], bool] | None = None,
) -> PyTree:
    """A tree of bools with the structure of `model`: `True` on the leaves to prune.

    At most one of the three selectors may be given:

    - `filter_spec`: an Equinox filter spec (a callable `leaf -> bool`, or a pytree prefix of
      bools/callables), as taken by `eqx.filter`.
    - `where`: a function `model -> node or tuple of nodes` (as for `eqx.tree_at`); every leaf under
      the returned nodes is prunable.
    - `filter_fn`: a function `(path, leaf) -> bool`, with `path` a string like `layers[0].weight`.

    With none given, floating arrays with `ndim >= 2` are prunable.
    """
    given = [n for n, v in (("filter_spec", filter_spec), ("where", where), ("filter_fn", filter_fn)) if v is not None]
    if len(given) > 1:
        raise TypeError(f"Pass at most one of filter_spec, where, filter_fn; got {', '.join(given)}.")
    if where is not None:
        false_tree = jax.tree.map(lambda _: False, model)
        spec = eqx.tree_at(where, false_tree, replace_fn=lambda node: jax.tree.map(lambda _: True, node))
    elif filter_fn is not None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(model)
        spec = jax.tree.unflatten(treedef, [bool(filter_fn(path_str(p), leaf)) for p, leaf in flat])
    else:
        marked = eqx.filter(model, is_default_prunable if filter_spec is None else filter_spec, replace=_UNSET)
        spec = jax.tree.map(lambda x: x is not _UNSET, marked)
    chosen = 0
    for (path, leaf), keep in zip(leaves_with_paths(model), jax.tree.leaves(spec)):
        if keep:
            if not eqx.is_inexact_array(leaf):
                raise ValueError(
                    f"Leaf `{path}` was selected for pruning but is {type(leaf).__name__}"
                    f"{'' if not hasattr(leaf, 'dtype') else ' of dtype ' + str(leaf.dtype)}, not a floating "
                    "array. Select only floating-point arrays (e.g. filter_spec=eqx.is_inexact_array)."
                )
            chosen += 1
    if chosen == 0:
        raise ValueError(
            "The model has no prunable leaves. By default only floating arrays with ndim >= 2 are pruned; "
            "choose leaves with filter_spec=..., where=... or filter_fn=(path, leaf) -> bool."
        )
    return spec

"""Key-path helpers shared by the compatibility modules.

JaxPruner keys parameters by the tuple of dict keys that `flax.traverse_util.flatten_dict` gives.
Here every pytree gets such a tuple: dict keys and attribute names as they are, sequence indices
as ints (`("layers", 0, "weight")` for an Equinox MLP). `None` leaves are kept, so a filtered
Equinox module (`eqx.filter(model, eqx.is_array)`) keeps its shape.
"""

from typing import Any

import jax
import numpy as np


def is_none(x: Any) -> bool:
    return x is None


def _name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def key_tuple(path: tuple) -> tuple:
    """The plain tuple key of a JAX key path, e.g. `('layers', 0, 'weight')`."""
    return tuple(_name(e) for e in path)


def flat_items(tree: Any) -> tuple[list[tuple[tuple, Any]], Any]:
    """`([(key tuple, leaf), ...], treedef)` with None leaves kept."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    return [(key_tuple(p), x) for p, x in flat], treedef


def map_with_keys(fn, tree: Any, *rest: Any) -> Any:
    """`fn(key, leaf, *rest_leaves)` over the leaves of `tree` (None leaves included); `rest` trees
    must have `tree`'s structure (a None there is passed as None)."""
    items, treedef = flat_items(tree)
    others = [treedef.flatten_up_to(r) for r in rest]
    return treedef.unflatten([fn(k, x, *(o[i] for o in others)) for i, (k, x) in enumerate(items)])


def is_single_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def summary_key(key: tuple) -> str:
    return "/".join(str(k) for k in key)

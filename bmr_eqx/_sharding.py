"""Placing bmr_eqx models on a device mesh: statistics follow their weights."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from ._posterior import Posterior
from ._sites import join_path
from ._sparse import Sparse
from ._tree import PyTree, is_wrapper, path_str

Rule = Callable[[str, Any], Sharding]


def _plain_items(tree: PyTree, prefix: str = "") -> dict[str, Any]:
    """`{plain path: leaf}` of a (sharding-valued) tree: wrappers see through to their model
    (`Sparse.model`, `Posterior.mean`), their statistics are left out."""
    out = {}
    for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: is_wrapper(x) or x is None)[0]:
        path = join_path(prefix, path_str(p))
        if isinstance(x, Sparse):
            out.update(_plain_items(x.model, path))
        elif isinstance(x, Posterior):
            out.update(_plain_items(x.mean, path))
        else:
            out[path] = x
    return out


def _replicated(shardings: list[Any]) -> Sharding | None:
    for s in shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, PartitionSpec())
        if isinstance(s, Sharding):
            return s if s.is_fully_replicated else None
    return None


def _shardings(node: Any, prefix: str, rule: Rule) -> Any:
    """A tree shaped like `node` with the sharding of each of its arrays (None elsewhere)."""
    if isinstance(node, Sparse):
        inner = _shardings(node.model, prefix, rule)
        by_path = _plain_items(inner)
        return eqx.tree_at(lambda s: (s.model, s.masks), node, (inner, {k: by_path[k] for k in node.masks}),
                           is_leaf=lambda x: x is None)
    if isinstance(node, Posterior):
        mean = _shardings(node.mean, prefix, rule)
        by_path = _plain_items(mean)
        others = _replicated(list(by_path.values()))
        out = jax.tree.map(lambda x: others if eqx.is_array(x) else None, node)
        return eqx.tree_at(lambda p: (p.mean, p.hess), out, (mean, {k: by_path[k] for k in node.hess}),
                           is_leaf=lambda x: x is None)
    flat, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=is_wrapper)
    out = []
    for p, x in flat:
        path = join_path(prefix, path_str(p))
        if is_wrapper(x):
            out.append(_shardings(x, path, rule))
        elif eqx.is_array(x):
            s = rule(path, x)
            if not isinstance(s, Sharding):
                raise TypeError(f"The sharding rule returned {type(s).__name__} for `{path}`; return a "
                                "jax.sharding.Sharding (e.g. NamedSharding(mesh, PartitionSpec('model', None))).")
            try:
                if isinstance(s, NamedSharding) and len(s.spec) > x.ndim:
                    raise ValueError(f"{s.spec} names {len(s.spec)} axes.")
                s.shard_shape(x.shape)
            except Exception as e:
                raise ValueError(f"The sharding the rule gave `{path}` (shape {tuple(x.shape)}) does not fit it: "
                                 f"{str(e).splitlines()[0]} Replicate it, or shard an axis the mesh divides.") from None
            out.append(s)
        else:
            out.append(None)
    return treedef.unflatten(out)


def shard(model: PyTree, sharding: Sharding | Rule) -> PyTree:
    """Place `model` on devices, its masks and posterior curvature sharded exactly like their weights.

    Outside `jax.jit` this is `jax.device_put`; inside, a sharding constraint, so a jitted step can
    keep a model sharded (`eqx.filter_jit` then propagates the shardings through the step, pruning
    included: masks are computed where their weights are, and a top-k exchanges only counts).

    **Arguments:**

    - `model`: any pytree holding `Sparse` or `Posterior` models (or none).
    - `sharding`: one `jax.sharding.Sharding` for every array, or a rule `(path, array) ->
      Sharding` called for every array of the *plain* model, by its plain path (the one masks are
      keyed by: `"layers[0].weight"`, whatever wrappers hold it). Masks and curvature take the
      sharding of their weight; a `Posterior`'s other statistics are replicated.

    **Returns:** `model`, placed.
    """
    rule = sharding if callable(sharding) and not isinstance(sharding, Sharding) else (lambda path, leaf: sharding)
    shardings = _shardings(model, "", rule)
    dynamic, static = eqx.partition(model, eqx.is_array)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(dynamic)):
        dynamic = jax.lax.with_sharding_constraint(dynamic, shardings)
    else:
        dynamic = jax.device_put(dynamic, shardings)
    return eqx.combine(dynamic, static)

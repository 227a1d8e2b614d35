"""Leaf paths, the default prunable rule, and walks through trees that hold bmr_eqx wrappers.

Every statistic the library stores (masks, curvature) is keyed by a leaf's *plain path*: its path in
the user's tree with the wrapper hops (`Sparse.model`, `Posterior.mean`) left out, so a weight is
`layers[0].weight` whether the MLP is bare, in a `Sparse` or in a `Posterior(Sparse(...))`.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax

PyTree = Any
KeyPath = tuple[Any, ...]


def is_none(x: Any) -> bool:
    """`is_leaf` for tree maps that must see `None` as a leaf."""
    return x is None


def path_str(path: Sequence[Any]) -> str:
    """The readable name of a key path, e.g. `layers[0].weight`."""
    return jax.tree_util.keystr(tuple(path)).lstrip(".")


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    """`(path, leaf)` pairs of a pytree in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in flat]


class AbstractWrapper(eqx.Module):
    """A bmr_eqx wrapper (`Sparse`, `Posterior`): holds a model plus statistics keyed by plain path."""

    @abc.abstractmethod
    def inner(self) -> PyTree:
        """The wrapped model."""

    def weight_masks(self) -> dict[str, Any]:
        """Masks that keep pruned weights of the wrapped model at 0 under optimisers (by path)."""
        return {}

    def without_statistics(self) -> "AbstractWrapper":
        """This wrapper with its float statistics replaced by None (for `trainable`)."""
        return self


def is_wrapper(x: Any) -> bool:
    return isinstance(x, AbstractWrapper)


def _is_state_index(x: Any) -> bool:
    # A StateIndex holds the initial value of a layer's state (BatchNorm running statistics) until
    # `make_with_state` removes it: state, never a parameter.
    return isinstance(x, eqx.nn.StateIndex)


def _stop(x: Any) -> bool:
    return is_wrapper(x) or _is_state_index(x)


class Param(NamedTuple):
    """One leaf of a model seen through its wrappers: plain `path`, the `leaf`, and the `mask` that
    keeps it at 0 under optimisers (None if there is none)."""

    path: str
    leaf: Any
    mask: Any


def _walk(tree: PyTree, prefix: KeyPath, masks: dict[str, Any], out: list[Param]) -> None:
    if is_wrapper(tree):
        own = tree.weight_masks()
        _walk(tree.inner(), prefix, own, out)
        return
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_stop)
    for kp, x in flat:
        if is_wrapper(x):
            _walk(x, prefix + tuple(kp), {}, out)
        elif not _is_state_index(x):
            path = path_str(prefix + tuple(kp))
            rel = path_str(tuple(kp))
            out.append(Param(path, x, masks.get(rel)))


def params(tree: PyTree) -> list[Param]:
    """Every leaf of the models in `tree` (masks and statistics left out), with its plain path and
    its mask, in flattening order."""
    out: list[Param] = []
    _walk(tree, (), {}, out)
    return out


def trainable_params(tree: PyTree) -> list[Param]:
    """The entries of `params(tree)` that an optimiser trains, aligned with
    `jax.tree.leaves(trainable(tree))`."""
    return [p for p in params(tree) if eqx.is_inexact_array(p.leaf)]


def trainable(tree: PyTree) -> PyTree:
    """The trainable part of any model, bmr_eqx wrappers included.

    Floating arrays are kept; masks (bool), posterior statistics (a `Posterior`'s `hess`) and the
    initial values inside `eqx.nn.StateIndex` are replaced by None, so no optimiser ever decays or
    moves them. Use it for
    `optimizer.init(bmr_eqx.trainable(model))` and as the `params` of `optimizer.update`.

    **Arguments:**

    - `tree`: any pytree: a `Sparse`, a `Posterior`, a module holding them, a tuple of models.

    **Returns:** `tree` with every non-trainable leaf replaced by None.
    """
    stripped = jax.tree.map(lambda x: x.without_statistics() if is_wrapper(x) else x, tree, is_leaf=is_wrapper)
    stripped = jax.tree.map(lambda x: jax.tree.map(lambda _: None, x) if _is_state_index(x) else x, stripped,
                            is_leaf=_is_state_index)
    return eqx.filter(stripped, eqx.is_inexact_array)


def unflatten_like_trainable(tree: PyTree, leaves: list[Any]) -> PyTree:
    """A tree shaped like `trainable(tree)` with `leaves` in place of its leaves."""
    return jax.tree.structure(trainable(tree)).unflatten(leaves)


def flatten_like_trainable(tree: PyTree, other: PyTree, what: str) -> list[Any]:
    """The leaves of `other`, a tree shaped like `trainable(tree)` (None allowed at leaves; where
    `trainable(tree)` has None, `other` may hold anything, as ordinary gradient trees do)."""
    out: list[Any] = []

    def pick(t: Any, o: Any) -> None:
        if t is not None:
            out.append(o)

    try:
        jax.tree.map(pick, trainable(tree), other, is_leaf=is_none)
        return out
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what} does not have the structure of the model's trainable part (bmr_eqx.trainable(model)); "
            f"pass the gradients/updates of the same model. Details: {e}"
        ) from None


# ---- which leaves are prunable ------------------------------------------------------------------

_WEIGHT_NAMES = ("weight", "weight_ih", "weight_hh", "kernel")


def _weight_layers() -> tuple[type, ...]:
    return (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.ConvTranspose, eqx.nn.Embedding, eqx.nn.GRUCell, eqx.nn.LSTMCell)


def _norm_layers() -> tuple[type, ...]:
    return (eqx.nn.LayerNorm, eqx.nn.RMSNorm, eqx.nn.GroupNorm, eqx.nn.BatchNorm)


def nodes_on_path(root: PyTree, keypath: KeyPath) -> list[Any]:
    """The nodes met following `keypath` from `root` (root excluded), as far as it can be followed."""
    node, out = root, []
    for k in keypath:
        try:
            if isinstance(k, jax.tree_util.GetAttrKey):
                node = getattr(node, k.name)
            elif isinstance(k, jax.tree_util.SequenceKey):
                node = node[k.idx]
            elif isinstance(k, jax.tree_util.DictKey):
                node = node[k.key]
            else:
                break
        except (AttributeError, IndexError, KeyError, TypeError):
            break
        out.append(node)
    return out


def _parent(root: PyTree, keypath: KeyPath) -> Any:
    """The node that holds the leaf at `keypath` (None if it cannot be followed)."""
    if not keypath[:-1]:
        return root
    nodes = nodes_on_path(root, keypath[:-1])
    return nodes[-1] if len(nodes) == len(keypath) - 1 else None


def is_default_prunable(root: PyTree, keypath: KeyPath, leaf: Any) -> bool:
    """The default rule: the weight matrices and kernels of layers, never biases or norm scales.

    A leaf is prunable when it is a floating array with `ndim >= 2` held in a field named `weight`,
    `weight_ih`, `weight_hh` or `kernel` of a module that is not a normalisation layer
    (`LayerNorm`, `RMSNorm`, `GroupNorm`, `BatchNorm`). This selects the weights of `Linear`, `Conv`,
    `ConvTranspose`, `Embedding`, `GRUCell`, `LSTMCell`, attention projections and scan-over-layers
    stacks of them (`(layers, out, in)`), and leaves out `Conv` biases shaped `(out, 1, 1)` and
    stacked biases or norm scales shaped `(layers, d)`. In a dict of parameters (Flax style), the
    entries keyed `kernel` or `weight` with `ndim >= 2` are prunable.
    """
    if not (eqx.is_inexact_array(leaf) and leaf.ndim >= 2 and keypath):
        return False
    last = keypath[-1]
    if isinstance(last, jax.tree_util.DictKey):  # Flax-style parameter dicts: {"dense": {"kernel": ...}}
        return last.key in _WEIGHT_NAMES
    if not (isinstance(last, jax.tree_util.GetAttrKey) and last.name in _WEIGHT_NAMES):
        return False
    return not isinstance(_parent(root, keypath), _norm_layers())


def prunable_paths(
    model: PyTree,
    filter_spec: Any = None,
    where: Callable[[PyTree], Any] | None = None,
    filter_fn: Callable[[str, Any], bool] | None = None,
) -> list[str]:
    """The paths (relative to `model`) of the leaves to prune, in flattening order.

    At most one selector may be given: `filter_spec` (an Equinox filter spec, as for
    `eqx.filter`), `where` (a function `model -> node or tuple of nodes`, as for `eqx.tree_at`;
    every leaf under them is chosen) or `filter_fn(path, leaf) -> bool`. With none, the default
    rule (`is_default_prunable`) applies.
    """
    given = [n for n, v in (("filter_spec", filter_spec), ("where", where), ("filter_fn", filter_fn)) if v is not None]
    if len(given) > 1:
        raise TypeError(f"Pass at most one of filter_spec, where, filter_fn; got {', '.join(given)}.")
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    if where is not None:
        false_tree = treedef.unflatten([False] * len(flat))
        spec = eqx.tree_at(where, false_tree, replace_fn=lambda node: jax.tree.map(lambda _: True, node))
        chosen = jax.tree.leaves(spec)
    elif filter_fn is not None:
        chosen = [bool(filter_fn(path_str(p), leaf)) for p, leaf in flat]
    elif filter_spec is not None:
        marker = object()
        marked = eqx.filter(model, filter_spec, replace=marker)
        chosen = [x is not marker for x in jax.tree.leaves(marked, is_leaf=lambda x: x is marker)]
    else:
        chosen = [is_default_prunable(model, tuple(p), leaf) for p, leaf in flat]
    paths = []
    for (p, leaf), keep in zip(flat, chosen):
        if keep:
            path = path_str(p)
            if not eqx.is_inexact_array(leaf):
                raise ValueError(
                    f"Leaf `{path}` was selected for pruning but is {type(leaf).__name__}"
                    f"{'' if not hasattr(leaf, 'dtype') else ' of dtype ' + str(leaf.dtype)}, not a floating "
                    "array. Select only floating-point arrays (e.g. filter_spec=eqx.is_inexact_array)."
                )
            paths.append(path)
    if not paths:
        raise ValueError(
            "The model has no prunable leaves. By default the weights of Linear, Conv, ConvTranspose, "
            "Embedding, GRU/LSTM cells and other fields named `weight`/`kernel` with ndim >= 2 are pruned; "
            "choose leaves with filter_spec=..., where=... or filter_fn=(path, leaf) -> bool."
        )
    return paths


def where(mask: Any, on: Any, off: Any) -> Any:
    """`jnp.where(mask, on, off)`. When `on` is an array of `mask`'s shape and `off` an array or a
    Python scalar it can take, the select is written in `lax`: every `jnp` function is a nested jit
    whose first trace costs a millisecond or more, and these selects run once per pruned leaf."""
    shape = getattr(on, "shape", None)
    dtype = getattr(on, "dtype", None)
    if shape is not None and shape == getattr(mask, "shape", None) and getattr(mask, "dtype", None) == jax.numpy.bool_:
        if isinstance(off, (int, float)) and not isinstance(off, bool) and jax.numpy.issubdtype(dtype, jax.numpy.inexact):
            off = jax.lax.full_like(on, off)
        if getattr(off, "shape", None) == shape and getattr(off, "dtype", None) == dtype:
            return jax.lax.select(mask, on, off)
    return jax.numpy.where(mask, on, off)


def keep_pruned_at_zero(ps: list[Param], updates: list[Any]) -> list[Any]:
    """Updates (aligned with `ps`) that bring every pruned weight to exactly 0 and keep it there (its
    update is `-w`: 0 for a weight already at 0); the others move as given."""
    return [u if (u is None or p.mask is None) else where(p.mask, u, -p.leaf) for p, u in zip(ps, updates)]

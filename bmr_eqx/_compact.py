"""Compaction: a pruned model becomes a smaller dense Equinox model with the same outputs."""

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._sites import find_sites, join_path, no_sparse_error, unwrap
from ._sparse import Sparse, apply_masks
from ._tree import PyTree, path_str


def _is_elementwise(fn: Any) -> bool:
    """Whether `fn` maps a vector entry by entry (checked on a probe vector)."""
    probe = jnp.linspace(-3.0, 3.0, 7)
    try:
        return bool(jnp.allclose(fn(probe), jax.vmap(fn)(probe), rtol=1e-6, atol=1e-6))
    except Exception:  # a function that is not elementwise may fail on scalars
        return False


def _linear(weight: np.ndarray, bias: np.ndarray | None, like: eqx.nn.Linear) -> eqx.nn.Linear:
    out, inp = weight.shape
    new = eqx.nn.Linear(inp, out, use_bias=bias is not None, dtype=like.weight.dtype, key=jax.random.key(0))
    new = eqx.tree_at(lambda lin: lin.weight, new, jnp.asarray(weight, like.weight.dtype))
    if bias is not None:
        new = eqx.tree_at(lambda lin: lin.bias, new, jnp.asarray(bias, like.bias.dtype))
    return new


def _compact_mlp(mlp: eqx.nn.MLP, path: str, masks: dict[str, Any], left: dict[str, str]) -> eqx.nn.MLP:
    """`mlp` (its pruned weights at 0) without the hidden units that are dead (every input weight
    pruned: a constant, folded into the next layer's bias) or unused (every output weight pruned)."""
    if any(lin.weight.ndim != 2 for lin in mlp.layers):
        left[path or "(root)"] = "its weights are stacked (scan over layers, an ensemble): compact each member"
        return mlp
    if not _is_elementwise(mlp.activation):
        left[path or "(root)"] = "its activation is not elementwise, so a unit cannot be removed alone"
        return mlp
    ws = [np.asarray(lin.weight) for lin in mlp.layers]
    bs = [None if lin.bias is None else np.asarray(lin.bias) for lin in mlp.layers]
    ms = [np.asarray(masks.get(join_path(path, f"layers[{i}].weight"), np.ones(w.shape, bool))) for i, w in enumerate(ws)]
    for i in range(len(ws) - 1):
        dead = ~ms[i].any(axis=1)  # the unit's output is its activated bias
        unused = ~ms[i + 1].any(axis=0)  # nothing reads the unit
        const = np.asarray(mlp.activation(jnp.asarray(bs[i] if bs[i] is not None else np.zeros(len(dead), ws[i].dtype))))
        foldable = dead & ((const == 0) | (bs[i + 1] is not None))
        fold = foldable & ~unused
        if fold.any():
            bs[i + 1] = bs[i + 1] + ws[i + 1][:, fold] @ const[fold]
        keep = ~(unused | foldable)
        ws[i], ms[i] = ws[i][keep], ms[i][keep]
        bs[i] = None if bs[i] is None else bs[i][keep]
        ws[i + 1], ms[i + 1] = ws[i + 1][:, keep], ms[i + 1][:, keep]
    layers = tuple(_linear(w, b, lin) for w, b, lin in zip(ws, bs, mlp.layers))
    widths = [w.shape[0] for w in ws[:-1]]
    new = eqx.nn.MLP(mlp.in_size, mlp.out_size, max(widths, default=mlp.width_size), mlp.depth,
                     activation=mlp.activation, final_activation=mlp.final_activation, use_bias=mlp.use_bias,
                     use_final_bias=mlp.use_final_bias, dtype=ws[0].dtype, key=jax.random.key(0))
    return eqx.tree_at(lambda m: m.layers, new, layers)


def _compact(sparse: Sparse, prefix: str, left: dict[str, str]) -> PyTree:
    model = apply_masks(sparse.model, sparse.masks)
    done: set[str] = set()

    def visit(p: Any, node: Any) -> Any:
        if not isinstance(node, eqx.nn.MLP):
            return node
        path = path_str(p).lstrip(".")
        done.update(k for k in sparse.masks if k.startswith(join_path(path, "layers[")))
        return _compact_mlp(node, path, sparse.masks, left)

    model = jax.tree_util.tree_map_with_path(visit, model, is_leaf=lambda x: isinstance(x, eqx.nn.MLP))
    for key in sparse.masks:
        if key not in done:
            left[join_path(prefix, key)] = ("not inside an eqx.nn.MLP: its pruned entries stay as zeros (compaction "
                                            "of convolutions, residual blocks and attention is not built yet)")
    return model


def compact(model: PyTree) -> PyTree:
    """A pruned model as a smaller dense Equinox model with the same outputs.

    In every `eqx.nn.MLP` of the model, a hidden unit whose input weights are all pruned outputs a
    constant (its activated bias): it is removed and the constant folded into the next layer's
    bias. A unit whose output weights are all pruned is removed too. The layers become smaller
    `eqx.nn.Linear`s (`in_features`, `out_features` to match; the MLP's `width_size` is its widest
    hidden layer). The remaining pruned entries are stored as zeros, so the outputs equal the
    masked model's to float tolerance. Pruned leaves outside an MLP stay as they are (pruned
    entries 0), and a warning names them.

    **Arguments:** `model`, any pytree holding `Sparse` models (a `Posterior` compacts its mean).

    **Returns:** `model` without bmr_eqx wrappers, compacted.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))):
        raise TypeError("compact runs eagerly (the number of units kept sets the shapes): call it outside jit.")
    if not find_sites(model):
        raise no_sparse_error(model)
    left: dict[str, str] = {}
    out = unwrap(model, lambda sparse, prefix: _compact(sparse, prefix, left))
    if left:
        warnings.warn("compact left these as they are: " + "; ".join(f"`{k}`: {v}" for k, v in left.items()),
                      stacklevel=2)
    return out

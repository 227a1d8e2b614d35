"""Compaction: a pruned model becomes a smaller dense Equinox model with the same outputs."""

import dataclasses
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._groups import Group, Member, _state_names, plain_model, trace_groups
from ._sites import find_sites, join_path
from ._tree import PyTree, leaves_with_paths, path_str


def _is_elementwise(fn: Any) -> bool:
    """Whether `fn` maps a vector entry by entry (checked on a probe vector)."""
    probe = jnp.linspace(-3.0, 3.0, 7)
    try:
        return bool(jnp.allclose(fn(probe), jax.vmap(fn)(probe), rtol=1e-6, atol=1e-6))
    except Exception:  # a function that is not elementwise may fail on scalars
        return False


def _linear(weight: np.ndarray, bias: np.ndarray | None, like: eqx.nn.Linear) -> eqx.nn.Linear:
    out, inp = weight.shape
    inp = like.in_features if like.in_features == "scalar" else inp
    out = like.out_features if like.out_features == "scalar" else out
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


def _mlp_pass(model: PyTree, left: dict[str, str]) -> PyTree:
    """`model` (a plain model, pruned entries at 0) with every `eqx.nn.MLP` compacted (`left`:
    what could not be, by path)."""

    def visit(p: Any, node: Any) -> Any:
        if not isinstance(node, eqx.nn.MLP):
            return node
        path = path_str(p).lstrip(".")
        masks = {join_path(path, f"layers[{i}].weight"): np.asarray(lin.weight) != 0 for i, lin in enumerate(node.layers)}
        return _compact_mlp(node, path, masks, left)

    return jax.tree_util.tree_map_with_path(visit, model, is_leaf=lambda x: isinstance(x, eqx.nn.MLP))


def _zero_channels(leaf: Any, member: Member, size: int) -> np.ndarray:
    """Which channels of a group have only zeros in `member`'s slices of `leaf`."""
    w = np.asarray(leaf)
    nonzero = (np.moveaxis(w, member.axis, 0).reshape(w.shape[member.axis], -1) != 0).any(axis=1)
    channels = np.asarray(member.channels)
    used = np.zeros(size, bool)
    np.logical_or.at(used, channels[channels >= 0], nonzero[channels >= 0])
    return ~used


def _kept_entries(groups: list[Group], leaves: dict[str, Any]) -> dict[tuple[str, int], np.ndarray]:
    """{(path, axis): the entries kept} for every leaf axis that loses entries: the channels of a
    group whose slices in every consumer are zero (a group keeps at least one channel)."""
    keep: dict[tuple[str, int], np.ndarray] = {}
    for g in groups:
        by_axis = {(m.path, m.axis): m for m in g.members}
        removable = np.ones(g.size, bool)
        for path, axis in g.consumers:
            removable &= _zero_channels(leaves[path], by_axis[(path, axis)], g.size)
        if removable.all():
            removable[0] = False
        if not removable.any():
            continue
        for m in g.members:
            channels = np.asarray(m.channels)
            drop = (channels >= 0) & removable[np.maximum(channels, 0)]
            keep[(m.path, m.axis)] = keep.get((m.path, m.axis), np.ones(len(channels), bool)) & ~drop
    return keep


def _state_index_inits(flat: list, keep: dict[tuple[str, int], np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """Keep entries for the initial values a layer's `StateIndex` still holds (`bn.batch_state_index.init[0]`,
    before `make_with_state` removes them): those of the layer's weight, when their length matches."""
    out = {}
    for p, x in flat:
        path = path_str(p)
        head, _, tail = path.partition("_state_index.init")
        owner = head.rpartition(".")[0]
        if tail and np.ndim(x) >= 1 and (owner + ".weight", 0) in keep and len(keep[(owner + ".weight", 0)]) == len(x):
            out[(path, 0)] = keep[(owner + ".weight", 0)]
    return out


def _sliced(leaf: Any, keep: dict[tuple[str, int], np.ndarray], path: str) -> Any:
    axes = [axis for axis in range(np.ndim(leaf)) if (path, axis) in keep]
    if not axes:
        return leaf
    out = np.asarray(leaf)
    for axis in axes:
        out = np.take(out, np.flatnonzero(keep[(path, axis)]), axis=axis)
    return jnp.asarray(out, dtype=leaf.dtype)


def _with_fields(module: eqx.Module, changes: dict[str, Any]) -> eqx.Module:
    new = object.__new__(type(module))
    for f in dataclasses.fields(module):
        if hasattr(module, f.name):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(module, f.name)))
    return new


def _sizes(module: eqx.Module) -> dict[str, Any]:
    """The static size fields of an Equinox layer, read from its (compacted) weights."""
    if isinstance(module, eqx.nn.Linear) and module.weight.ndim == 2:  # (not a stack of layers)
        out, inp = module.weight.shape
        return {"in_features": module.in_features if module.in_features == "scalar" else inp,
                "out_features": module.out_features if module.out_features == "scalar" else out}
    if isinstance(module, (eqx.nn.Conv, eqx.nn.ConvTranspose)) and module.weight.ndim == module.num_spatial_dims + 2:
        return {"out_channels": module.weight.shape[0], "in_channels": module.weight.shape[1] * module.groups}
    if isinstance(module, eqx.nn.BatchNorm) and module.weight is not None and module.weight.ndim == 1:
        return {"input_size": module.weight.shape[0]}
    if isinstance(module, eqx.nn.MultiheadAttention) and module.query_proj.weight.ndim == 2:
        heads = module.query_proj.weight.shape[0] // module.qk_size
        return {"num_heads": heads, "vo_size": module.value_proj.weight.shape[0] // heads}
    if isinstance(module, eqx.nn.MLP):
        hidden = [lin.weight.shape[-2] for lin in module.layers[:-1]]
        first, last = module.layers[0].weight, module.layers[-1].weight
        return {"width_size": max(hidden, default=module.width_size),
                "in_size": module.in_size if module.in_size == "scalar" else first.shape[-1],
                "out_size": module.out_size if module.out_size == "scalar" else last.shape[-2]}
    return {}


def _refresh(x: Any) -> Any:
    """`x` with the size fields of every Equinox layer in it matching its weights."""
    if isinstance(x, eqx.Module):
        changes = {f.name: _refresh(getattr(x, f.name)) for f in dataclasses.fields(x) if hasattr(x, f.name)}
        new = _with_fields(x, changes)
        return _with_fields(new, _sizes(new))
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_refresh(v) for v in x)
    if isinstance(x, dict):
        return {k: _refresh(v) for k, v in x.items()}
    return x


@eqx.filter_jit
def _outputs(model: PyTree, args: tuple, kwargs: dict) -> list[Any]:
    out = eqx.nn.inference_mode(model)(*args, **kwargs)
    plain, _ = eqx.partition(out, lambda x: not isinstance(x, eqx.nn.State), is_leaf=lambda x: isinstance(x, eqx.nn.State))
    return jax.tree.leaves(plain)


def compact(model: PyTree, *example_args: Any, **example_kwargs: Any) -> Any:
    """A pruned model as a smaller dense Equinox model with the same outputs.

    Removes every channel that no longer contributes: a unit, filter or attention head whose slices
    in every weight that reads it are pruned (zero) is deleted from all the leaves of its coupled
    group (`bmr_eqx.dependency_groups`): the layer that writes it, its bias, the `BatchNorm` scale,
    shift and running statistics that act on it, the layers that read it, every layer of a residual
    stream. Inside an `eqx.nn.MLP`, a hidden unit whose input weights are all pruned outputs a
    constant (its activated bias), which is folded into the next layer's bias. The layers become
    smaller Equinox layers with matching size fields (`in_features`, `out_channels`,
    `input_size`, `num_heads`, `width_size`, ...); remaining pruned entries stay as zeros, so the
    outputs equal the masked model's to float tolerance (checked on the example call).

    **Arguments:**

    - `model`: a pytree holding `Sparse` models (a `Posterior` compacts its mean), or a plain model
      whose pruned weights are 0.
    - `*example_args`, `**example_kwargs`: one call's arguments (one example for a per-example
      model; include the `eqx.nn.State` if the model has `BatchNorm`). Without them only
      `eqx.nn.MLP`s are compacted.

    **Returns:** the compacted plain model, or `(model, state)` when an `eqx.nn.State` is among the
    arguments (its `BatchNorm` statistics sliced to match). A warning names the pruned leaves whose
    zeros could not be removed, and why.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))):
        raise TypeError("compact runs eagerly (the number of units kept sets the shapes): call it outside jit.")
    pruned = {join_path(s.prefix, k) for s in find_sites(model) for k in s.sparse.masks}
    left: dict[str, str] = {}
    plain = _mlp_pass(plain_model(model), left)
    args = (example_args, example_kwargs)
    has_state = any(isinstance(x, eqx.nn.State) for x in jax.tree.leaves(args, is_leaf=lambda x: isinstance(x, eqx.nn.State)))
    if not example_args and not example_kwargs:
        _warn_left(plain, pruned, left, "not whole units of an eqx.nn.MLP; pass example arguments to compact other layers")
        return plain
    groups, named = trace_groups(plain, example_args, example_kwargs)
    leaves = dict(named)
    keep = _kept_entries(groups, leaves)
    params, static = eqx.partition(plain, eqx.is_array)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keep = {**keep, **_state_index_inits(flat, keep)}
    new = _refresh(eqx.combine(treedef.unflatten([_sliced(x, keep, path_str(p)) for p, x in flat]), static))

    def slice_state(state: Any) -> Any:
        names = _state_names(plain, state)
        leaves_s, td = jax.tree.flatten(state)
        return td.unflatten([_sliced(x, keep, names.get(id(x), "")) for x in leaves_s])

    new_args, new_kwargs = jax.tree.map(lambda x: slice_state(x) if isinstance(x, eqx.nn.State) else x, args,
                                        is_leaf=lambda x: isinstance(x, eqx.nn.State))
    before, after = _outputs(plain, example_args, example_kwargs), _outputs(new, new_args, new_kwargs)
    if len(before) != len(after) or not all(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
                                            for a, b in zip(before, after)):
        raise RuntimeError("compact changed the model's outputs on the example call; this is a bug in bmr_eqx, please "
                           "report it with the model. The uncompacted model is unaffected.")
    _warn_left(new, pruned, left, "not whole channels that nothing reads")
    if has_state:
        state = next(x for x in jax.tree.leaves((new_args, new_kwargs), is_leaf=lambda x: isinstance(x, eqx.nn.State))
                     if isinstance(x, eqx.nn.State))
        return new, state
    return new


def _warn_left(model: PyTree, pruned: set[str], reasons: dict[str, str], default: str) -> None:
    """Warn about pruned leaves of `model` that still hold zeros after compaction."""
    left = {}
    for path, leaf in leaves_with_paths(eqx.filter(model, eqx.is_array)):
        reason = next((r for p, r in reasons.items()
                       if p == "(root)" or path == p or path.startswith((p + ".", p + "["))), default)
        if path in pruned and np.asarray(leaf).size and not np.asarray(leaf).all():
            frac = float(np.mean(np.asarray(leaf) == 0))
            left[path] = f"{frac:.0%} zeros stay ({reason})"
    if left:
        warnings.warn("compact kept these pruned entries as stored zeros: " + "; ".join(f"`{k}`: {v}" for k, v in left.items()),
                      stacklevel=3)

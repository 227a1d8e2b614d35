"""One-shot pruning of a trained model from calibration data, without retraining.

`input_statistics` runs the model on calibration batches and accumulates, for every weight matrix
that multiplies an activation (an `eqx.nn.Linear`'s `weight @ x`, also under `vmap`, in an
`eqx.nn.MLP` or the projections of an `eqx.nn.MultiheadAttention`), the statistics of that
matrix's input: the squared norm of each input feature and the Gram matrix XᵀX. It finds the inputs
by tracing the model's call to a jaxpr and evaluating it with a small interpreter that notes the
other operand of every `dot_general` whose one operand is a weight leaf (moved or cast at most).

Two pruners read them:

- `Wanda(stats)` scores `|W_ij|·‖X_j‖₂` (Sun et al., 2023, "A Simple and Effective Pruning Approach
  for Large Language Models"), compared within each output row (`PerRow`) or N:M group
  (`WandaPruning` builds the `Pruner`);
- `sparsegpt` prunes layer after layer and reconstructs the kept weights from the inverse Hessian
  H⁻¹ = (XᵀX + λI)⁻¹ (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be
  Accurately Pruned in One-Shot"); `sparsegpt_layer` is its step on one matrix.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jaxtyping import Array, ArrayLike

from ._distributions import as_sparsity
from ._groups import weight_derived
from ._masks import _sanitize, rank_along_last
from ._pruner import Pruner
from ._scores import AbstractScore, Leaf
from ._selection import AbstractSelection, AbstractStructure, NByM, SparsityAt, Unit, Unstructured, parse_sparsity_type
from ._sparse import Sparse
from ._tree import PyTree, is_wrapper, path_str

# ---- input statistics ----------------------------------------------------------------------------


class InputStats(NamedTuple):
    """The accumulated input of one weight matrix over the calibration data.

    - `count`: how many input rows (examples × positions) were seen;
    - `sq_norm`: `(d_in,)`, the sum over rows of each input feature squared (‖X_j‖₂²);
    - `gram`: `(d_in, d_in)`, XᵀX in float32 (None when computed with `gram=False`);
    - `axis`: the weight's axis that the input features run along (1 for an `eqx.nn.Linear`'s
      `(d_out, d_in)` weight, 0 for a weight used as `x @ w`).
    """

    count: Any
    sq_norm: Array
    gram: Array | None = None
    axis: int = 1


# Calls whose inner jaxpr is evaluated in place (so a weight passed in is followed inside). Other
# primitives with inner jaxprs (loops, conditionals, shard_map, kernels) are bound as they are.
_INLINED = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                      "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint"})
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class _Use(NamedTuple):
    """One `dot_general` of a weight against an activation: the weight's `path`, the weight's
    contracted (input) `axis`, and the activation `x` reshaped to `(rows, d_in)` (an abstract value
    while only discovering the uses)."""

    path: str
    axis: int
    x: Any


def _bind(eqn: Any, invals: list) -> list:
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Sequence[Any] = ()
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
    ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
    if ctx is None:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        with ctx:
            out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _eval(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], origin_in: Sequence[Any],
          act_in: Sequence[bool], record: Callable[[_Use], None], paths: Sequence[str]) -> tuple[list, list, list]:
    """Evaluate `jaxpr` on `args` (values or tracers), calling `record` at every dot_general of a
    weight against an activation. `origin_in[i]`: `(leaf index, leaf axis of each axis)` when
    argument `i` is a weight leaf (moved or cast at most), else None; `act_in[i]`: whether argument
    `i` depends on the batch. Returns the outputs, their origins and their activation flags."""
    env: dict = {}
    origin: dict = {}
    act: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a, o, f in zip(jaxpr.invars, args, origin_in, act_in):
        env[v], act[v] = a, f
        if o is not None:
            origin[v] = o
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        in_origin = [None if isinstance(v, jex_core.Literal) else origin.get(v) for v in eqn.invars]
        in_act = [False if isinstance(v, jex_core.Literal) else act.get(v, False) for v in eqn.invars]
        name = eqn.primitive.name
        sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
        if sub is not None and name in _INLINED:
            inner = getattr(sub, "jaxpr", sub)
            outs, out_origin, out_act = _eval(inner, getattr(sub, "consts", ()), invals, in_origin, in_act,
                                              record, paths)
            for v, x, o, f in zip(eqn.outvars, outs, out_origin, out_act):
                env[v], act[v] = x, f
                if o is not None:
                    origin[v] = o
            continue
        if name == "dot_general":
            _note_dot(eqn, invals, in_origin, in_act, record, paths)
        outs = _bind(eqn, invals)
        any_act = any(in_act)
        for v, x in zip(eqn.outvars, outs):
            env[v], act[v] = x, any_act
        # a weight moved, cast or scaled is still that weight (the rule dependency_groups follows)
        kinds = ["act" if a else ("param" if o is not None else "const") for a, o in zip(in_act, in_origin)]
        derived = weight_derived(name, eqn, kinds, origin)
        if derived is not None:
            origin[eqn.outvars[0]] = derived
    outs = [read(v) for v in jaxpr.outvars]
    out_origin = [None if isinstance(v, jex_core.Literal) else origin.get(v) for v in jaxpr.outvars]
    out_act = [False if isinstance(v, jex_core.Literal) else act.get(v, False) for v in jaxpr.outvars]
    return outs, out_origin, out_act


def _note_dot(eqn: Any, invals: list, in_origin: list, in_act: list, record: Callable[[_Use], None],
              paths: Sequence[str]) -> None:
    """Record the activation operand of a dot_general whose other operand is a 2-D weight leaf,
    contracted along one axis with no batch axes."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for side in (0, 1):
        other = 1 - side
        o = in_origin[side]
        if o is None or in_origin[other] is not None or not in_act[other]:
            continue
        contract, batch, other_contract = (lc, lb, rc) if side == 0 else (rc, rb, lc)
        if len(o[1]) != 2 or len(contract) != 1 or len(batch) != 0:
            continue
        leaf_axis = o[1][contract[0]]
        if leaf_axis is None:  # contracted along an axis the weight was broadcast to
            continue
        other_axis = other_contract[0]
        x = invals[other]
        d_in = x.shape[other_axis]
        x = jnp.moveaxis(x, other_axis, -1).reshape(-1, d_in)
        record(_Use(paths[o[0]], int(leaf_axis), x))


def _trace(model: PyTree, forward: Callable, batch: Any, record: Callable[[_Use], None]) -> None:
    """Trace `forward(model, batch)` to a jaxpr and evaluate it with `record` at every weight use."""
    params, static = eqx.partition(model, eqx.is_array)
    dyn_batch, static_batch = eqx.partition(batch, eqx.is_array)

    def call(p: PyTree, b: PyTree) -> Any:
        return forward(eqx.combine(p, static), eqx.combine(b, static_batch))

    closed = jax.make_jaxpr(call)(params, dyn_batch)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_b = jax.tree.leaves(dyn_batch)
    paths = [path_str(kp) for kp, _ in flat_p]
    origin = [(i, (0, 1)) if (jnp.ndim(x) == 2 and jnp.issubdtype(x.dtype, jnp.inexact)) else None
              for i, (_, x) in enumerate(flat_p)]
    args = [x for _, x in flat_p] + list(flat_b)
    origin += [None] * len(flat_b)
    act = [False] * len(flat_p) + [True] * len(flat_b)
    _eval(closed.jaxpr, closed.consts, args, origin, act, record, paths)


def _plain(model: PyTree) -> PyTree:
    if is_wrapper(model) or any(is_wrapper(x) for x in jax.tree.leaves(model, is_leaf=is_wrapper)):
        from ._groups import plain_model

        return plain_model(model)
    return model


def _uses(model: PyTree, forward: Callable, batch: Any) -> dict[str, int]:
    """`{path: input axis}` of the weights that `forward(model, batch)` multiplies against an
    activation, in the order of their first use."""
    found: dict[str, int] = {}

    def record(use: _Use) -> None:
        axis = found.setdefault(use.path, use.axis)
        if axis != use.axis:
            raise ValueError(
                f"`{use.path}` is contracted against activations along axis {axis} in one place and along axis "
                f"{use.axis} in another; input statistics need one input axis per weight."
            )

    eqx.filter_eval_shape(lambda m, b: _trace(m, forward, b, record), model, batch)
    return found


@eqx.filter_jit
def _batch_stats(model: PyTree, batch: Any, forward: Callable, wanted: tuple[str, ...], gram: bool) -> dict:
    """`{path: InputStats}` of the weights in `wanted` on one batch (compiled once per batch shape)."""
    out: dict[str, list] = {}

    def record(use: _Use) -> None:
        if use.path not in wanted:
            return
        x = use.x.astype(jnp.float32)
        hi = jax.lax.Precision.HIGHEST
        sq = jnp.sum(x * x, axis=0)
        g = jnp.matmul(x.T, x, precision=hi) if gram else None
        prev = out.get(use.path)
        if prev is None:
            out[use.path] = [x.shape[0], sq, g, use.axis]
        else:
            prev[0] += x.shape[0]
            prev[1] = prev[1] + sq
            prev[2] = None if g is None else prev[2] + g

    _trace(model, forward, batch, record)
    return {p: InputStats(c, s, g, a) for p, (c, s, g, a) in out.items()}


@jax.jit
def _add(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


def _chosen(used: dict[str, int], paths: Any) -> list[str]:
    """The weights (in order of use) that `paths` picks among those with input statistics (`used`):
    all of them for None; a `ValueError` naming any path that has none."""
    if paths is None:
        return list(used)
    paths = (paths,) if isinstance(paths, str) else tuple(paths)
    unknown = [p for p in paths if p not in used]
    if unknown:
        raise ValueError(
            f"paths names {unknown}, which the model does not multiply against an activation (no input "
            f"statistics); the weights that have them are {list(used)}."
        )
    return [p for p in used if p in set(paths)]


def input_statistics(
    model: PyTree,
    forward: Callable[[PyTree, Any], Any],
    batches: Iterable[Any],
    *,
    paths: Sequence[str] | None = None,
    gram: bool = True,
) -> dict[str, InputStats]:
    """Accumulate the input statistics of every weight matrix of `model` over calibration batches.

    A weight is a 2-D floating leaf that the model multiplies against an activation in a
    `dot_general` (an `eqx.nn.Linear`'s `weight @ x`, also under `vmap`, inside `eqx.nn.MLP` and
    the projections of `eqx.nn.MultiheadAttention`), directly or moved, cast or scaled by a constant. Its
    input is the other operand, with the contracted axis as the `d_in` input features and every
    other axis (batch, sequence) counted as examples. A weight used twice (shared, or a layer called
    twice) accumulates both inputs. Weights used inside `lax.scan` / `while_loop` / `cond`,
    convolution kernels and embeddings (a gather) have no statistics.

    The model's call is traced once with `jax.make_jaxpr` and evaluated by a small interpreter that
    notes the inputs; the per-batch computation is compiled once (`eqx.filter_jit`) per batch shape,
    and the results are summed in float32.

    **Arguments:**

    - `model`: the trained model; one holding `Sparse` / `Posterior` wrappers is run as its plain
      model (pruned weights at 0) and keyed by plain paths.
    - `forward`: `forward(model, batch)` runs the model on one batch, e.g.
      `lambda m, x: jax.vmap(m)(x)`.
    - `batches`: an iterable of batches (each what `forward` takes as its second argument).
    - `paths`: restrict to these weights (plain paths such as `"layers[0].weight"`); default: all.
    - `gram`: also accumulate the `(d_in, d_in)` Gram matrices XᵀX (needed by `sparsegpt`, not by
      `Wanda`).

    **Returns:** `{path: InputStats(count, sq_norm, gram, axis)}`, in the order of first use.
    """
    model = _plain(model)
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError(
            "no calibration batches: `batches` is empty; pass an iterable of at least one batch, e.g. a list of "
            "arrays of inputs."
        ) from None
    wanted = tuple(_chosen(_uses(model, forward, first), paths))
    total = _batch_stats(model, first, forward, wanted, gram)
    for batch in it:
        new = _batch_stats(model, batch, forward, wanted, gram)
        arrays = _add({p: (s.sq_norm, s.gram) for p, s in total.items()}, {p: (s.sq_norm, s.gram) for p, s in new.items()})
        total = {p: InputStats(total[p].count + new[p].count, *arrays[p], total[p].axis) for p in total}
    return {p: total[p] for p in wanted}


# ---- Wanda ---------------------------------------------------------------------------------------


def _no_gram(stats: Any) -> dict[str, InputStats]:
    if not isinstance(stats, dict) or not all(isinstance(s, InputStats) for s in stats.values()):
        raise TypeError("Wanda takes the dict that bmr_eqx input_statistics(model, forward, batches) returns.")
    return {p: s._replace(gram=None) for p, s in stats.items()}


class Wanda(AbstractScore):
    """Wanda's score `|W_ij|·‖X_j‖₂`: a weight's magnitude times the norm of its input feature over
    the calibration data (Sun et al., 2023). Wanda compares weights within each output row: use it
    with `PerRow(sparsity)` or `NByM(n, m)` (as `WandaPruning` does).

    **Arguments:** `stats`, the `input_statistics` of the model (only `sq_norm` is kept). A leaf
    with no statistics (a convolution kernel, an embedding) raises a `ValueError`: leave it dense
    with `keep_dense=`.
    """

    stats: dict[str, InputStats] = eqx.field(converter=_no_gram)

    def __call__(self, leaf: Leaf) -> Array:
        s = self.stats.get(leaf.path)
        if s is None:
            raise ValueError(
                f"Wanda has no input statistics for `{leaf.path}`; the layers with statistics are {sorted(self.stats)}. "
                "Only weight matrices multiplied against an activation (eqx.nn.Linear and the like) get statistics, "
                f"not convolution kernels or embeddings: leave it dense (keep_dense=('{leaf.path}',)) or compute "
                "its statistics."
            )
        w = leaf.weight
        if w.ndim != 2 or w.shape[s.axis] != s.sq_norm.shape[0]:
            raise ValueError(
                f"The input statistics of `{leaf.path}` have {s.sq_norm.shape[0]} input features along axis {s.axis}, "
                f"but the leaf has shape {tuple(w.shape)}: were they computed for another model?"
            )
        norm = jnp.sqrt(s.sq_norm.astype(jnp.float32))
        norm = norm[None, :] if s.axis == 1 else norm[:, None]
        return jnp.abs(w).astype(jnp.float32) * norm


def _prune_count(size: int, sparsity: Any) -> Any:
    """`round(size·sparsity)` in float32 (ties to even), clipped to `[0, size − 1]`."""
    if isinstance(sparsity, (int, float)):
        k = int(np.round(np.float32(size) * np.float32(sparsity)))
        return min(size - 1, max(0, k))
    s = jnp.asarray(sparsity, jnp.float32)
    return jnp.clip(jnp.round(size * s), 0, size - 1).astype(jnp.int32)


class PerRow(AbstractSelection):
    """Prune the same number of entries in every row: the `round(sparsity·d)` lowest scores of each
    slice along `axis` (of length `d`; at least one entry per row is kept; ties: the lower index is
    kept). For an `eqx.nn.Linear` weight and `axis=-1` this compares the weights of one output,
    as Wanda does.

    **Arguments:** `sparsity`, the fraction pruned per row in `[0, 1)`; `axis` (default -1).
    """

    sparsity: Any = eqx.field(converter=as_sparsity)
    axis: int = -1

    def __check_init__(self):
        if self.sparsity is None:
            raise ValueError("PerRow needs a target: pass sparsity=<number in [0, 1)>.")

    def check(self, structure: AbstractStructure) -> None:
        if not isinstance(structure, Unstructured):
            raise ValueError(f"PerRow selects single entries and needs unstructured sparsity, got {structure!r}.")

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array]:
        out = []
        for u in units:
            shape, path = tuple(u.scores.shape), u.leaf.path
            if not shape or not -len(shape) <= self.axis < len(shape):
                raise ValueError(f"PerRow axis {self.axis} is out of range for `{path}` of shape {shape}.")
            moved = jnp.moveaxis(_sanitize(u.scores), self.axis, -1)
            k = _prune_count(moved.shape[-1], sparsity_at(self.sparsity))
            keep = rank_along_last(moved) < moved.shape[-1] - k
            out.append(jnp.moveaxis(keep, -1, self.axis))
        return out


def WandaPruning(
    stats: dict[str, InputStats], *, sparsity: Any = None, sparsity_type: Any = "unstructured", keep_dense: Any = (),
) -> Pruner:
    """Wanda (Sun et al., 2023): one-shot pruning by `|W_ij|·‖X_j‖₂`, compared within each output
    row (for `(d_out, d_in)` weights such as `eqx.nn.Linear`'s), no weight update. Use it as
    `WandaPruning(input_statistics(model, forward, batches, gram=False), sparsity=0.5).prune(model)`.

    **Arguments:**

    - `stats`: the `input_statistics` of the model.
    - `sparsity`: the fraction pruned in every row, in `[0, 1)`; omit for N:M.
    - `sparsity_type`: `"unstructured"` (`PerRow(sparsity)`), or N:M along the input axis (`"2:4"`,
      `"4:8"`, or an `NByM(n, m)`).
    - `keep_dense`: leaf paths left dense (those with no statistics, e.g. convolution kernels).

    **Returns:** a `Pruner`.
    """
    score = Wanda(stats)
    transposed = sorted(p for p, s in score.stats.items() if s.axis != 1)
    if transposed:
        raise ValueError(
            f"{transposed} take their input along axis 0 (used as `x @ w`); WandaPruning compares along the last "
            "axis. Build `Pruner(Wanda(stats), PerRow(sparsity, axis=0))` for them."
        )
    kind = parse_sparsity_type(sparsity_type)
    if isinstance(kind, NByM):
        if sparsity is not None:
            raise ValueError(
                f"sparsity={sparsity!r} conflicts with N:M sparsity {kind.n}:{kind.m}, which fixes the sparsity; "
                "drop sparsity=."
            )
        return Pruner(score, NByM(kind.n, kind.m, axis=-1), keep_dense=keep_dense)
    if not isinstance(kind, Unstructured):
        raise ValueError(
            f"WandaPruning supports 'unstructured' and N:M sparsity, got {sparsity_type!r}; for structured "
            "pruning build `Pruner(Wanda(stats), TopK(sparsity), Channel())`."
        )
    if sparsity is None:
        raise ValueError("WandaPruning needs sparsity=<number in [0, 1)> for unstructured sparsity.")
    return Pruner(score, PerRow(sparsity), keep_dense=keep_dense)


# ---- SparseGPT -----------------------------------------------------------------------------------


def _as_nm(n_by_m: Any) -> tuple[int, int] | None:
    if n_by_m is None:
        return None
    if isinstance(n_by_m, NByM):
        return n_by_m.n, n_by_m.m
    if isinstance(n_by_m, str):
        kind = parse_sparsity_type(n_by_m)
        if isinstance(kind, NByM):
            return kind.n, kind.m
    elif isinstance(n_by_m, tuple) and len(n_by_m) == 2:
        kind = NByM(*n_by_m)
        return kind.n, kind.m
    raise ValueError(f"n_by_m must be an NByM(n, m), a tuple (n, m) or a string 'n:m', got {n_by_m!r}.")


def _check_options(sparsity: Any, n_by_m: Any, block_size: Any, dampening: Any, mask: Any = None) -> tuple:
    if isinstance(dampening, bool) or not isinstance(dampening, (int, float)) or not dampening > 0:
        raise ValueError(
            f"dampening must be a number > 0, got {dampening!r}: it adds dampening·mean(diag H) to the diagonal "
            "of H = XᵀX so that H can be inverted (0.01 is usual)."
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    nm = _as_nm(n_by_m)
    given = sum(x is not None for x in (sparsity, nm, mask))
    if given != 1:
        raise ValueError("Pass exactly one of sparsity=<number in [0, 1)> and n_by_m=(n, m)"
                         + (" and mask=" if mask is not None else "") + ".")
    if sparsity is not None:
        sparsity = as_sparsity(sparsity)
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"block_size={block_size} must be a multiple of m={nm[1]} for N:M sparsity.")
    return sparsity, nm


def _inverse_hessian_factor(gram: Array, weight: Array, dampening: Array) -> tuple[Array, Array]:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) with H = XᵀX + dampening·mean(diag)·I, and
    the weight with its dead inputs (diag(XᵀX) = 0) at 0."""
    d = gram.shape[0]
    diag = jnp.diagonal(gram)
    dead = diag == 0
    h = gram + jnp.diag(jnp.where(dead, 1.0, 0.0))
    weight = jnp.where(dead[None, :], 0.0, weight)
    h = h + dampening * jnp.mean(jnp.diagonal(h)) * jnp.eye(d, dtype=h.dtype)
    lower = jax.scipy.linalg.cholesky(h, lower=True)
    linv = jax.scipy.linalg.solve_triangular(lower, jnp.eye(d, dtype=h.dtype), lower=True)
    hinv = jnp.matmul(linv.T, linv, precision=jax.lax.Precision.HIGHEST)
    return jax.scipy.linalg.cholesky(hinv, lower=False), weight


def _block_counts(d: int, block_size: int, total: int) -> tuple[int, ...]:
    """How many entries of each row every block prunes, so that the blocks add up to `total` and
    each block's share is proportional to its width."""
    bounds = list(range(0, d, block_size)) + [d]
    cum = [(total * b + d // 2) // d for b in bounds]
    return tuple(b - a for a, b in zip(cum[:-1], cum[1:]))


@jax.jit(static_argnames=("counts", "nm", "block_size"))
def _obs_prune(weight: Array, gram: Array, fixed_prune: Array | None, dampening: Array, counts: tuple | None,
               nm: tuple | None, block_size: int) -> tuple[Array, Array]:
    """SparseGPT on one `(d_out, d_in)` matrix: (the reconstructed weight, its keep mask)."""
    hi = jax.lax.Precision.HIGHEST
    w = weight.astype(jnp.float32)
    d_out, d = w.shape
    u, w = _inverse_hessian_factor(gram.astype(jnp.float32), w, dampening)
    nb = -(-d // block_size)
    size = nb * block_size
    pad = size - d
    w = jnp.pad(w, ((0, 0), (0, pad)))
    u = jnp.pad(u, ((0, pad), (0, pad))) + jnp.diag(jnp.arange(size) >= d).astype(jnp.float32)
    valid = jnp.arange(size) < d
    prune0 = jnp.zeros((d_out, size), bool) if fixed_prune is None else jnp.pad(fixed_prune, ((0, 0), (0, pad)))
    counts_arr = jnp.asarray(counts if counts is not None else (0,) * nb, jnp.int32)

    def block(b: Any, carry: tuple) -> tuple:
        w, prune = carry
        i1 = b * block_size
        w1 = jax.lax.dynamic_slice(w, (0, i1), (d_out, block_size))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (block_size, block_size))
        urows = jax.lax.dynamic_slice(u, (i1, 0), (block_size, size))
        dg = jnp.diagonal(u1)
        p1 = jax.lax.dynamic_slice(prune, (0, i1), (d_out, block_size))
        if counts is not None:  # adaptive mask selection: per row, this block's share of the pruned
            ok = jax.lax.dynamic_slice(valid, (i1,), (block_size,))
            score = jnp.where(ok[None, :], w1 * w1 / (dg * dg)[None, :], jnp.inf)
            p1 = rank_along_last(score) >= block_size - counts_arr[b]

        def column(i: Any, c: tuple) -> tuple:
            w1, p1, e1 = c
            if nm is not None:
                n, m = nm
                start = jnp.minimum(i, block_size - m)
                g = jax.lax.dynamic_slice(w1, (0, start), (d_out, m))
                gd = jax.lax.dynamic_slice(dg, (start,), (m,))
                group_prune = rank_along_last(g * g / (gd * gd)[None, :]) >= n
                p1 = jnp.where(i % m == 0, jax.lax.dynamic_update_slice(p1, group_prune, (0, start)), p1)
            wi = w1[:, i]
            q = jnp.where(p1[:, i], 0.0, wi)
            err = (wi - q) / u1[i, i]
            w1 = w1 - err[:, None] * u1[i][None, :]
            w1 = w1.at[:, i].set(q)
            return w1, p1, e1.at[:, i].set(err)

        w1, p1, e1 = jax.lax.fori_loop(0, block_size, column, (w1, p1, jnp.zeros_like(w1)))
        later = jnp.arange(size) >= i1 + block_size
        w = w - jnp.where(later[None, :], jnp.matmul(e1, urows, precision=hi), 0.0)
        w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
        return w, jax.lax.dynamic_update_slice(prune, p1, (0, i1))

    w, prune = jax.lax.fori_loop(0, nb, block, (w, prune0))
    keep = ~prune[:, :d]
    return jnp.where(keep, w[:, :d], 0.0).astype(weight.dtype), keep


def sparsegpt_layer(
    weight: ArrayLike,
    gram: ArrayLike,
    *,
    sparsity: Any = None,
    n_by_m: Any = None,
    mask: ArrayLike | None = None,
    block_size: int = 128,
    dampening: Any = 0.01,
) -> tuple[Array, Array]:
    """SparseGPT's step on one weight matrix: prune it and update the kept weights to make up for
    the pruned ones, from the Gram matrix XᵀX of its inputs.

    With H = XᵀX + dampening·mean(diag XᵀX)·I (the paper's 2XᵀX/n, whose scale changes nothing) and U
    the upper Cholesky factor of H⁻¹, the columns (inputs) are processed in order, in blocks of
    `block_size`: at the start of each block (unstructured) every row prunes its share of the
    target in that block, the entries of smallest w²/U_jj², from the weights as updated so far
    (adaptive mask selection; the shares of the blocks add up to `round(sparsity·d_in)` per row),
    or (N:M) at every m-th column each group of m prunes its m − n entries of smallest w²/U_jj².
    Pruning column j sets it to 0 and corrects the later columns by err·U[j, j+1:] with
    err = w_j/U_jj (the OBS update restricted to the columns not yet processed); the corrections of
    later blocks are applied lazily, once per block. Inputs that were always 0 get weight 0.

    **Arguments:**

    - `weight`: `(d_out, d_in)`, the input axis last.
    - `gram`: `(d_in, d_in)`, XᵀX of its inputs (`input_statistics(...)[path].gram`).
    - `sparsity`: the fraction pruned in every row, in `[0, 1)`; or
    - `n_by_m`: `(n, m)`, `"n:m"` or `NByM(n, m)`: keep n of every m consecutive inputs; or
    - `mask`: a fixed bool keep mask of `weight`'s shape (only the reconstruction is computed).
    - `block_size`: columns per block (a multiple of m for N:M).
    - `dampening`: λ > 0, relative to the mean of diag(XᵀX).

    **Returns:** `(new_weight, keep_mask)`: the reconstructed weight, pruned entries at exactly 0,
    and the bool mask (True = kept).
    """
    sparsity, nm = _check_options(sparsity, n_by_m, block_size, dampening, mask)
    weight, gram = jnp.asarray(weight), jnp.asarray(gram)
    if weight.ndim != 2 or gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"sparsegpt_layer needs a (d_out, d_in) weight and a (d_in, d_in) gram, got "
                         f"{tuple(weight.shape)} and {tuple(gram.shape)}.")
    d = weight.shape[1]
    if nm is not None and d % nm[1]:
        raise ValueError(f"N:M with m={nm[1]} needs the number of inputs ({d}) to be divisible by {nm[1]}.")
    fixed = None
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != weight.shape or mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be a bool array of the weight's shape {tuple(weight.shape)}.")
        fixed = ~mask
    counts = None if sparsity is None else _block_counts(d, block_size, _prune_count(d, sparsity))
    new, keep = _obs_prune(weight, gram, fixed, jnp.float32(dampening), counts, nm, block_size)
    if not bool(jnp.all(jnp.isfinite(new))):
        raise ValueError("SparseGPT's inverse Hessian is not finite in float32: increase dampening.")
    return new, keep


def _replace_leaf(model: PyTree, path: str, value: Array) -> PyTree:
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    return treedef.unflatten([value if path_str(kp) == path else x for kp, x in flat])


def sparsegpt(
    model: PyTree,
    forward: Callable[[PyTree, Any], Any],
    batches: Iterable[Any],
    *,
    sparsity: Any = None,
    n_by_m: Any = None,
    block_size: int = 128,
    dampening: Any = 0.01,
    paths: Sequence[str] | None = None,
) -> Sparse:
    """SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with weight reconstruction, layer by
    layer, from calibration data.

    The weights are pruned in the order the model first uses them; each one's input statistics are
    computed on the model pruned so far (the inputs the pruned model really gives it), and it is
    pruned by `sparsegpt_layer`. Every batch runs once per pruned weight (simple, not fast: for
    small and medium models).

    **Arguments:**

    - `model`: the trained plain model.
    - `forward`, `batches`: as for `input_statistics` (the batches are read once per weight, so
      an iterator is first copied into a list).
    - `sparsity`: the fraction pruned in every row of every weight, in `[0, 1)`; or
    - `n_by_m`: `(n, m)`, `"n:m"` or `NByM(n, m)`: N:M along the input axis.
    - `block_size`: columns per block (default 128; a multiple of m for N:M).
    - `dampening`: λ > 0, added as λ·mean(diag XᵀX) to the diagonal (default 0.01).
    - `paths`: prune only these weights (default: every weight with input statistics).

    **Returns:** `Sparse(model_with_reconstructed_weights, masks={path: mask})` (pruned weights at
    exactly 0; the weights not pruned stay dense and unmasked).
    """
    _check_options(sparsity, n_by_m, block_size, dampening)
    if is_wrapper(model) or any(is_wrapper(x) for x in jax.tree.leaves(model, is_leaf=is_wrapper)):
        raise TypeError("sparsegpt prunes a plain trained model; pass the model itself, not a Sparse or Posterior.")
    batches = list(batches)
    if not batches:
        raise ValueError("no calibration batches: `batches` is empty; pass at least one batch.")
    order = _chosen(_uses(model, forward, batches[0]), paths)
    masks = {}
    for path in order:
        stats = input_statistics(model, forward, batches, paths=(path,))[path]
        w = dict((path_str(kp), x) for kp, x in jax.tree_util.tree_flatten_with_path(model)[0])[path]
        wt = w if stats.axis == 1 else w.T
        new, keep = sparsegpt_layer(wt, stats.gram, sparsity=sparsity, n_by_m=n_by_m, block_size=block_size,
                                    dampening=dampening)
        if stats.axis != 1:
            new, keep = new.T, keep.T
        model = _replace_leaf(model, path, new)
        masks[path] = keep
    return Sparse(model, masks=masks)



"""Sparse export: masked weight matrices as sparse matrices a plain Equinox model runs on."""

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse
from jaxtyping import Array, Float, Int

from ._sites import find_sites, join_path, no_sparse_error, unwrap
from ._sparse import Sparse, apply_masks
from ._tree import PyTree, path_str

# Above this density a BCOO product is slower than the dense one on CPU (benchmarks/bench_export.py,
# 1024x1024 `eqx.nn.Linear` layers on a 2-core CPU, jax 0.10.2: one example at 99% sparsity 0.57x
# the dense time, at 95% 1.2x; a vmapped batch of 256 is slower still, 5x at 99%).
BREAK_EVEN_DENSITY = 0.01


class NMMatrix(eqx.Module):
    """A weight matrix with N:M sparsity along its input axis, stored compressed: the `n` kept
    values of every group of `m` inputs, and their column indices. `W @ x` gathers the inputs it
    needs, so an `eqx.nn.Linear` holding one runs as before with `n/m` of the multiplications.

    **Fields:** `values` (`out, in·n/m`), `indices` (`out, in·n/m`, int32 column of each value),
    `shape` (the dense `(out, in)`).
    """

    values: Float[Array, "out kept"]
    indices: Int[Array, "out kept"]
    shape: tuple[int, int] = eqx.field(static=True)

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def __matmul__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return jnp.sum(self.values * x[self.indices], axis=-1)

    def todense(self) -> Float[Array, "out in"]:
        """The dense matrix (pruned entries 0)."""
        rows = jnp.arange(self.shape[0])[:, None]
        return jnp.zeros(self.shape, self.values.dtype).at[rows, self.indices].set(self.values)


def _nm_matrix(w: np.ndarray, mask: np.ndarray, n: int, m: int, path: str) -> NMMatrix:
    out, inp = mask.shape
    if inp % m or not np.all(mask.reshape(out, inp // m, m).sum(-1) == n):
        raise ValueError(f"The mask of `{path}` is not {n}:{m} along its input axis (every group of {m} "
                         f"consecutive inputs keeping exactly {n}); prune it with NByM({n}, {m}), keep it dense (a mask "
                         "of all True stays a dense matrix), or leave out n_by_m.")
    cols = np.nonzero(mask)[1].reshape(out, inp // m * n).astype(np.int32)  # row-major: sorted per row
    return NMMatrix(jnp.asarray(np.take_along_axis(w, cols, 1)), jnp.asarray(cols), (out, inp))


def _bcoo(w: np.ndarray, mask: np.ndarray) -> jsparse.BCOO:
    idx = np.argwhere(mask).astype(np.int32)
    return jsparse.BCOO((jnp.asarray(w[mask]), jnp.asarray(idx)), shape=w.shape, indices_sorted=True,
                        unique_indices=True)


def _export(sparse: Sparse, n_by_m: tuple[int, int] | None, prefix: str, left: dict[str, str],
            dense_paths: list[str]) -> PyTree:
    model = apply_masks(sparse.model, sparse.masks)
    done: set[str] = set()

    def convert(p: Any, node: Any) -> Any:
        if not isinstance(node, eqx.nn.Linear):
            return node
        key = (path_str(p) + ".weight").lstrip(".")
        mask = sparse.masks.get(key)
        if mask is None:
            return node
        full = join_path(prefix, key)
        if node.weight.ndim != 2:
            left[full] = f"stacked Linear weights of shape {tuple(node.weight.shape)} (scan over layers, an ensemble)"
            done.add(key)
            return node
        done.add(key)
        w, mk = np.asarray(node.weight), np.asarray(mask)
        if mk.all():  # not pruned (e.g. kept dense by the pruner): stays a dense matrix
            return node
        density = float(mk.mean())
        if density > 1.05 * BREAK_EVEN_DENSITY and n_by_m is None:  # 5%: rounding of the kept count
            dense_paths.append(f"{full} ({density:.0%})")
        matrix = _nm_matrix(w, mk, *n_by_m, full) if n_by_m is not None else _bcoo(w, mk)
        return eqx.tree_at(lambda lin: lin.weight, node, matrix)

    model = jax.tree_util.tree_map_with_path(convert, model, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))
    for key in sparse.masks:
        if key not in done:
            left[join_path(prefix, key)] = "not the weight of an eqx.nn.Linear (only `weight @ x` runs sparse)"
    return model


def to_bcoo(model: PyTree, *, n_by_m: tuple[int, int] | None = None) -> PyTree:
    """Export a pruned model for sparse inference: the plain Equinox model, with every masked
    weight of an `eqx.nn.Linear` (its own, an `MLP`'s, a `MultiheadAttention`'s projections) turned
    into a `jax.experimental.sparse.BCOO` matrix holding only the kept weights, or with `n_by_m` an
    `NMMatrix` (values and column indices). The layers run unchanged on them (`weight @ x`), and
    outputs equal the masked model's to float tolerance.

    Masked leaves used otherwise (convolution kernels, embeddings) stay dense, with their pruned
    entries 0, and a warning names them. Another warns of BCOO matrices denser than
    `BREAK_EVEN_DENSITY` (1%), above which sparse products are slower than dense ones on CPU
    (`benchmarks/bench_export.py` measures it; GPUs and N:M sparse kernels move it).
    Eager only (the number of kept weights sets the shapes).

    **Arguments:**

    - `model`: any pytree holding `Sparse` models (a `Posterior` exports its mean). A mask of all
      True (a leaf the pruner kept dense) leaves its weight a dense matrix.
    - `n_by_m`: `(n, m)` to store N:M masks compressed instead (every mask converted must keep
      exactly `n` of every `m` consecutive inputs, as `NByM(n, m)` prunes).

    **Returns:** `model` without bmr_eqx wrappers, on sparse weight matrices.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))):
        raise TypeError("to_bcoo runs eagerly (the count of kept weights sets the shapes): call it outside jit.")
    if n_by_m is not None and not (len(n_by_m) == 2 and 0 < n_by_m[0] <= n_by_m[1]):
        raise ValueError(f"n_by_m must be (n, m) with 0 < n <= m, got {n_by_m!r}.")
    if not find_sites(model):
        raise no_sparse_error(model)
    left: dict[str, str] = {}
    dense_paths: list[str] = []
    out = unwrap(model, lambda sparse, prefix: _export(sparse, n_by_m, prefix, left, dense_paths))
    if left:
        warnings.warn("to_bcoo left these masked leaves dense (pruned entries 0): "
                      + "; ".join(f"`{k}`: {v}" for k, v in left.items()), stacklevel=2)
    if dense_paths:
        warnings.warn(f"These weights keep more than {BREAK_EVEN_DENSITY:.0%} of their entries, where a sparse "
                      f"product is slower than a dense one on CPU: {', '.join(dense_paths)}. Prune further, or "
                      "run the masked model (`model.masked()`).", stacklevel=2)
    return out

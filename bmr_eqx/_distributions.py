"""How a target sparsity is spread over the prunable leaves (computed once, in Python)."""

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

Distribution = str | Mapping[str, float | None]

DISTRIBUTIONS = ("uniform", "erk", "global")


def as_sparsity(value: Any, what: str = "sparsity") -> Any:
    """A sparsity as a Python float in `[0, 1)` (None stays None). Python, NumPy and 0-d JAX numbers
    are accepted; a traced value is returned as it is (top-k then clamps it into `[0, 1)`)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return value
    if not isinstance(value, bool):
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - anything not array-like is rejected below
            arr = None
        if arr is not None and arr.ndim == 0 and (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            v = float(arr)
            if 0.0 <= v < 1.0:
                return v
    raise ValueError(f"{what} must be a number in [0, 1), got {value!r}.")


def as_distribution(distribution: Distribution) -> Distribution:
    """Check a distribution; a custom map is copied (so later edits of the caller's dict change
    nothing) with its sparsities as Python floats."""
    if isinstance(distribution, Mapping):
        return {path: as_sparsity(v, f"the sparsity of `{path}` in the custom distribution") for path, v in distribution.items()}
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribution {distribution!r}; use one of {DISTRIBUTIONS} or a dict mapping leaf paths "
            "(like 'layers[0].weight') to a sparsity or None."
        )
    return distribution


def erk_sparsities(
    shapes: Mapping[Any, tuple[int, ...]], sparsity: float, *, power: float | int = 1.0, kernel: bool = True
) -> dict[Any, float]:
    """Erdős–Rényi-kernel sparsities: the density of a leaf is proportional to
    `(sum(shape)/prod(shape))**power`, scaled so that the kept count equals the one a uniform
    allocation keeps (`size − ⌊sparsity·size⌋` per leaf, summed); leaves that would exceed density 1
    are made dense (the largest raw densities first) and the rest rescaled.

    **Arguments:**

    - `shapes`: a map from leaf path to shape.
    - `sparsity`: the overall target.
    - `power`: the exponent of the raw density (default 1; below 1 softens the allocation).
    - `kernel`: whether the kernel (spatial) axes count (default True). With False the raw density
      is `(n_in + n_out)/(n_in·n_out)` of the last two axes, the plain Erdős–Rényi rule.

    **Returns:** a map from leaf path to its sparsity.
    """

    def raw_density(shape: tuple[int, ...]) -> float:
        if kernel or len(shape) < 2:
            return (sum(shape) / math.prod(shape)) ** power
        n_in, n_out = shape[-2:]
        return (n_in + n_out) / (n_in * n_out)

    sizes = {p: math.prod(s) for p, s in shapes.items()}
    raw = {p: raw_density(tuple(s)) for p, s in shapes.items()}
    target = sum(n - math.floor(sparsity * n) for n in sizes.values())
    dense: set[str] = set()
    eps = 0.0
    while True:
        rest = [p for p in shapes if p not in dense]
        if not rest:
            break
        eps = (target - sum(sizes[p] for p in dense)) / sum(raw[p] * sizes[p] for p in rest)
        worst = max(raw[p] for p in rest)
        if eps * worst <= 1.0:
            break
        dense |= {p for p in rest if raw[p] == worst}
    return {p: 0.0 if p in dense else 1.0 - eps * raw[p] for p in shapes}


def leaf_sparsities(
    shapes: Mapping[str, tuple[int, ...]], sparsity: Any, distribution: Distribution
) -> dict[str, float | None]:
    """Per-leaf target sparsities (None = leave dense) for the leaves in `shapes` (path -> shape).

    `distribution` is `"uniform"`, `"erk"`, or a dict from leaf path to sparsity (None = dense);
    leaves absent from the dict get `sparsity`. `"global"` is not a per-leaf distribution: the
    pruners handle it with one top-k over all leaves.

    **Arguments:** `shapes`, a map from leaf path to shape; `sparsity`, the overall target;
    `distribution`, as above.

    **Returns:** a map from leaf path to its sparsity (None = dense).
    """
    sparsity = as_sparsity(sparsity)
    distribution = as_distribution(distribution)
    if isinstance(distribution, Mapping):
        unknown = sorted(set(distribution) - set(shapes))
        if unknown:
            raise ValueError(
                f"The custom distribution names {unknown}, which are not prunable leaves of the model; "
                f"prunable leaves are {sorted(shapes)}."
            )
        return {p: distribution.get(p, sparsity) for p in shapes}
    if distribution == "erk" and sparsity is not None:
        if isinstance(sparsity, jax.core.Tracer):
            raise ValueError(
                "distribution='erk' computes per-leaf sparsities in Python and needs a concrete sparsity, got a traced "
                "one; give the target as a Python number (schedules may still vary it during training)."
            )
        return erk_sparsities(shapes, sparsity)
    return {p: sparsity for p in shapes}

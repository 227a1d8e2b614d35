"""How a target sparsity is spread over the prunable leaves (computed once, in Python)."""

import math
from collections.abc import Mapping

Distribution = str | Mapping[str, float | None]

DISTRIBUTIONS = ("uniform", "erk", "global")


def check_sparsity(value: float | None, what: str = "sparsity") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}.")


def check_distribution(distribution: Distribution) -> None:
    if isinstance(distribution, Mapping):
        for path, value in distribution.items():
            check_sparsity(value, f"the sparsity of `{path}` in the custom distribution")
    elif distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribution {distribution!r}; use one of {DISTRIBUTIONS} or a dict mapping leaf paths "
            "(like 'layers[0].weight') to a sparsity or None."
        )


def erk_sparsities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Erdős–Rényi-kernel sparsities: density of a leaf ∝ sum(shape)/prod(shape), scaled so the
    kept count equals `(1 − sparsity)` of all entries; leaves that would exceed density 1 are made
    dense (the largest first) and the rest rescaled."""
    sizes = {p: math.prod(s) for p, s in shapes.items()}
    raw = {p: sum(s) / sizes[p] for p, s in shapes.items()}
    target = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [p for p in shapes if p not in dense]
        if not rest:
            break
        eps = (target - sum(sizes[p] for p in dense)) / sum(raw[p] * sizes[p] for p in rest)
        worst = max(rest, key=lambda p: raw[p])
        if eps * raw[worst] <= 1.0:
            break
        dense.add(worst)
    return {p: 0.0 if p in dense else 1.0 - eps * raw[p] for p in shapes}


def leaf_sparsities(
    shapes: Mapping[str, tuple[int, ...]], sparsity: float | None, distribution: Distribution
) -> dict[str, float | None]:
    """Per-leaf target sparsities (None = leave dense) for the leaves in `shapes` (path -> shape).

    `distribution` is `"uniform"`, `"erk"`, or a dict from leaf path to sparsity (None = dense);
    leaves absent from the dict get `sparsity`. `"global"` is not a per-leaf distribution: the
    pruners handle it with one top-k over all leaves.
    """
    check_sparsity(sparsity)
    check_distribution(distribution)
    if isinstance(distribution, Mapping):
        unknown = sorted(set(distribution) - set(shapes))
        if unknown:
            raise ValueError(
                f"The custom distribution names {unknown}, which are not prunable leaves of the model; "
                f"prunable leaves are {sorted(shapes)}."
            )
        return {p: distribution.get(p, sparsity) for p in shapes}
    if distribution == "erk" and sparsity is not None:
        return erk_sparsities(shapes, sparsity)
    return {p: sparsity for p in shapes}

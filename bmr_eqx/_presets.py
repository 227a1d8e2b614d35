"""The named algorithms: one-line presets of `Pruner`, with JaxPruner's and BMRPruner's names."""

from typing import Any

from ._distributions import Distribution
from ._pruner import Pruner
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule
from ._scores import Evidence, Magnitude, Normalized, PosteriorPrecision, Random, Saliency, SignalToNoise
from ._selection import (
    AbstractStructure,
    Block,
    NByM,
    SpikeAndSlab,
    Threshold,
    TopK,
    parse_sparsity_type,
    structure_and_selection,
)

SparsityType = AbstractStructure | NByM | str


GLOBAL_FLOOR = 0.1
"""The default `floor` of the global presets: every leaf keeps at least a tenth of the density a
uniform allocation would give it."""


def _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, straight_through=False,
          floor=None) -> Pruner:
    if floor is None:
        floor = GLOBAL_FLOOR if distribution == "global" else 0.0
    structure, selection = structure_and_selection(sparsity, distribution, sparsity_type, floor)
    return Pruner(score, selection, structure, schedule, monotone, keep_dense, straight_through)


def NoPruning(*, keep_dense: Any = ()) -> Pruner:
    """The dense baseline: masks never change (same interface as every pruner).

    **Arguments:**

    - `keep_dense`: accepted for symmetry; no leaf is pruned anyway.

    **Returns:** a `Pruner`.
    """
    return Pruner(Magnitude(), TopK(distribution={}), schedule=NoUpdateSchedule(), keep_dense=keep_dense)


def MagnitudePruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    """Prune the weights of smallest magnitude |w|.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Magnitude(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def SaliencyPruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    """Prune the weights of smallest saliency |w·∂L/∂w| (pass `grads=` to `update`/`prune`).

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Saliency(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def RandomPruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = True, keep_dense: Any = (),
) -> Pruner:
    """Prune random weights (pass `key=` to `update`/`prune`); monotone by default, so pruned weights
    never come back.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default True).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Random(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def GlobalMagnitudePruning(
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (),
    normalize: bool = False, floor: float | None = None,
) -> Pruner:
    """Magnitude pruning with one ranking across all prunable leaves, of raw |w| by default
    (measured better than per-leaf L2-normalised scores on the digits benchmark, see the docs'
    Bayesian page); `normalize=True` is JaxPruner's ranking.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"global"` (default), `"uniform"`, `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.
    - `normalize`: L2-normalise the scores per leaf before the global ranking (default False).
    - `floor`: every leaf keeps at least this fraction of its uniform share (default
      `GLOBAL_FLOOR` = 0.1 with `"global"`; see `TopK`).

    **Returns:** a `Pruner`.
    """
    score = Normalized(Magnitude()) if normalize else Magnitude()
    return _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, floor=floor)


def GlobalSaliencyPruning(
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (),
    normalize: bool = True, floor: float | None = None,
) -> Pruner:
    """Saliency pruning with one ranking across all prunable leaves (scores L2-normalised per leaf
    unless `normalize=False`).

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"global"` (default), `"uniform"`, `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.
    - `normalize`: L2-normalise the scores per leaf before the global ranking (default True).

    - `floor`: every leaf keeps at least this fraction of its uniform share (default
      `GLOBAL_FLOOR` = 0.1 with `"global"`; see `TopK`).

    **Returns:** a `Pruner`.
    """
    score = Normalized(Saliency()) if normalize else Saliency()
    return _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, floor=floor)


def BMRPruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = True, keep_dense: Any = (), curvature: str = "posterior",
) -> Pruner:
    """Bayesian model reduction with a target: per leaf, keep the weights whose removal costs the most
    evidence (rank by −ΔF of the spike reduced prior). With `sparsity_type="channel"`, whole
    neurons/filters are ranked by their group ΔF. Needs a `Posterior`; monotone by default.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default True).
    - `keep_dense`: leaf paths left dense.

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    return _topk(Evidence(curvature), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def GlobalBMRPruning(
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = True, keep_dense: Any = (), floor: float | None = None, curvature: str = "posterior",
) -> Pruner:
    """Bayesian model reduction with one ranking of raw ΔF across all leaves (ΔF is in nats in every
    layer, so no normalisation). Needs a `Posterior`; monotone by default. `BayesianGlobalPruning` is
    the BMRPruner fork's name for it.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"global"` (default), `"uniform"`, `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default True).
    - `keep_dense`: leaf paths left dense.

    - `floor`: every leaf keeps at least this fraction of its uniform share (default
      `GLOBAL_FLOOR` = 0.1 with `"global"`; see `TopK`).

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    return _topk(Evidence(curvature), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, floor=floor)


def SteBMRPruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (), curvature: str = "posterior",
) -> Pruner:
    """BMR with straight-through masks: pruned weights keep receiving gradients and may come back when
    their ΔF drops. Needs `Posterior(Sparse(model, straight_through=True), ...)`; recompute the masks
    often (e.g. `PeriodicSchedule(every=1)`).

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False, so that they can).
    - `keep_dense`: leaf paths left dense.

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    return _topk(Evidence(curvature), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, straight_through=True)


def UncertaintyMagnitudePruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (), curvature: str = "posterior",
) -> Pruner:
    """Prune by signal-to-noise |μ|/σ: small and uncertain weights go first. Needs a `Posterior`.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    return _topk(SignalToNoise(curvature), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def PosteriorVariancePruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = False, keep_dense: Any = (), curvature: str = "posterior",
) -> Pruner:
    """Prune the weights the data informed least first: those whose posterior precision stayed nearest
    the prior's (largest posterior variance). Needs a `Posterior`.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default False).
    - `keep_dense`: leaf paths left dense.

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    return _topk(PosteriorPrecision(curvature), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def AdaptiveBMR(
    threshold: float = 0.0, method: str = "threshold", *, sparsity_type: AbstractStructure | str = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), monotone: bool = True, keep_dense: Any = (), curvature: str = "posterior",
) -> Pruner:
    """Bayesian model reduction without a target: the evidence decides the sparsity.

    `method="threshold"` prunes every weight (or, with `sparsity_type="channel"` or a `Block`, every
    group, by its group ΔF) with `ΔF > threshold` (0: Bayes factor 1); `method="spike_and_slab"`
    fits a per-leaf inclusion rate by the spike-and-slab fixed point and prunes where `ΔF > ζ`.
    The best weight (group) of each leaf is always kept, so no layer loses all its outputs; leave
    a classifier head out with `keep_dense=("head.weight",)`. Needs a `Posterior`.

    **Arguments:**

    - `threshold`: T in nats (for `method="threshold"`).
    - `method`: `"threshold"` or `"spike_and_slab"`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"` or a structure instance (not N:M,
      which fixes the sparsity).
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back (default True).
    - `keep_dense`: leaf paths left dense.

    - `curvature`: the curvature ΔF reads: `"posterior"` (default, IVON's h as trained) or
      `"data"` (h with the initial value removed, `Posterior.data_hess`).

    **Returns:** a `Pruner`.
    """
    if method not in ("threshold", "spike_and_slab"):
        raise ValueError(f"AdaptiveBMR method must be 'threshold' or 'spike_and_slab', got {method!r}.")
    structure = parse_sparsity_type(sparsity_type)
    if isinstance(structure, NByM):
        raise ValueError("AdaptiveBMR lets the evidence set the sparsity; N:M fixes it. Use BMRPruning for N:M.")
    if isinstance(structure, Block) and structure.pool != "sum":  # group ΔF is the sum over the block
        structure = Block(structure.shape, "sum")
    rule = Threshold(-float(threshold)) if method == "threshold" else SpikeAndSlab()
    return Pruner(Evidence(curvature), rule, structure, schedule, monotone, keep_dense)


BayesianGlobalPruning = GlobalBMRPruning
"""The BMRPruner fork's name for `GlobalBMRPruning` (one global ranking by ΔF)."""

"""The named algorithms: one-line presets of `Pruner`, with JaxPruner's and BMRPruner's names."""

from typing import Any

from ._distributions import Distribution
from ._pruner import Pruner
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule, PeriodicSchedule
from ._scores import (
    AbstractScore,
    Evidence,
    GradientMagnitude,
    Magnitude,
    Normalized,
    PosteriorPrecision,
    Random,
    Saliency,
    SignalToNoise,
)
from ._selection import (
    AbstractStructure,
    Block,
    DropAndGrow,
    NByM,
    SpikeAndSlab,
    Threshold,
    TopK,
    Unstructured,
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
    their ΔF drops. Needs `Posterior(Sparse(model, straight_through=True), ...)`; like every
    straight-through pruner, `update` recomputes the mask at every step from the schedule's first
    update step on, at the sparsity the schedule puts in force then.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: the sparsity over training (default `OneShotSchedule(0)`: the target from the start).
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


# ---- sparse training -----------------------------------------------------------------------------


def SteMagnitudePruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), keep_dense: Any = (),
) -> Pruner:
    """Straight-through magnitude pruning: the mask keeps the largest dense |w|.

    Build the model as `Sparse(model, straight_through=True)`: the forward pass sees the masked
    weights, the dense weights keep training (gradients pass straight through the mask), and
    `update` recomputes the mask from them at every step from the schedule's first update step on
    (`every` does not matter here), at the sparsity the schedule puts in force then.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: the sparsity over training (default `OneShotSchedule(0)`: the target from the start).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Magnitude(), sparsity, distribution, sparsity_type, schedule, False, keep_dense, straight_through=True)


def SteRandomPruning(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = OneShotSchedule(0), keep_dense: Any = (),
) -> Pruner:
    """Straight-through random pruning: a new random mask at every step (pass `key=` to `update`).

    Build the model as `Sparse(model, straight_through=True)`: the forward pass sees the masked
    weights, the dense weights keep training (gradients pass straight through the mask), and
    `update` recomputes the mask from them at every step from the schedule's first update step on
    (`every` does not matter here), at the sparsity the schedule puts in force then.

    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: the sparsity over training (default `OneShotSchedule(0)`: the target from the start).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Random(), sparsity, distribution, sparsity_type, schedule, False, keep_dense, straight_through=True)


def StaticRandomSparse(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    keep_dense: Any = (),
) -> Pruner:
    """Static sparse training: a random mask drawn once, at each leaf's sparsity under
    `distribution` (exact counts: `round(n·(1 − s))` kept, at least one), never changed again.
    Draw it with `prune(model, key=...)` before training, and train with `masked_updates` so
    pruned weights stay at 0; `update` never changes it and needs no key.

    **Arguments:**

    - `sparsity`: the fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"` (default), `"channel"`, `"block"` or `"N:M"`.
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
    """
    return _topk(Random(), sparsity, distribution, sparsity_type, NoUpdateSchedule(), True, keep_dense)


def _drop_and_grow(drop: AbstractScore, grow: AbstractScore, sparsity, distribution, sparsity_type, drop_fraction,
                   drop_decay, schedule, keep_dense) -> Pruner:
    kind = parse_sparsity_type(sparsity_type)
    n_by_m = kind if isinstance(kind, NByM) else None
    structure = kind if n_by_m is None else Unstructured()
    selection = DropAndGrow(grow, sparsity, distribution, n_by_m, drop_fraction, drop_decay,
                            getattr(schedule, "start", 0), getattr(schedule, "end", None))
    return Pruner(drop, selection, structure, schedule, False, keep_dense)


def SET(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    drop_fraction: float = 0.3, drop_decay: str = "cosine", schedule: AbstractSchedule = PeriodicSchedule(every=100),
    keep_dense: Any = (),
) -> Pruner:
    """Sparse Evolutionary Training: at constant sparsity, every update drops the active weights of
    smallest |w| and regrows as many inactive ones at random (pass `key=` to `update`).

    **Arguments:**

    - `sparsity`: the constant fraction of pruned weights per leaf, in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"` (default) or `"N:M"` (e.g. `"2:4"`, or `NByM(n, m, axis)`):
      every group of `m` keeps `n` through drop and grow.
    - `drop_fraction`: the fraction of active weights dropped (and regrown) per update at the start
      of the schedule's window, in `[0, 1]` (default 0.3).
    - `drop_decay`: `"cosine"` (default; to 0 at the schedule's `end`, constant if it has none)
      or `"constant"`.
    - `schedule`: when masks are updated (default `PeriodicSchedule(every=100)`).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`. `prune(model)` prunes a denser model to the target by the drop score
    (start from a random mask with `StaticRandomSparse(...).prune(model, key=...)` instead).
    After every `update`, reset the optimizer moments of the regrown weights with
    `bmr_eqx.reset_regrown(opt_state, before, after)`.
    """
    return _drop_and_grow(Magnitude(), Random(), sparsity, distribution, sparsity_type, drop_fraction, drop_decay,
                          schedule, keep_dense)


def RigL(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    drop_fraction: float = 0.3, drop_decay: str = "cosine", schedule: AbstractSchedule = PeriodicSchedule(every=100),
    keep_dense: Any = (),
) -> Pruner:
    """Rigged Lottery: at constant sparsity, every update drops the active weights of smallest |w|
    and regrows the inactive ones of largest gradient magnitude. The gradient is the one with
    respect to the masked weights, dense where the mask is 0: pass
    `grads=eqx.filter_grad(lambda m: loss(bmr_eqx.straight_through(m), ...))(model)` to `update`.

    **Arguments:**

    - `sparsity`: the constant fraction of pruned weights per leaf, in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"` (default) or `"N:M"` (e.g. `"2:4"`, or `NByM(n, m, axis)`):
      every group of `m` keeps `n` through drop and grow.
    - `drop_fraction`: the fraction of active weights dropped (and regrown) per update at the start
      of the schedule's window, in `[0, 1]` (default 0.3).
    - `drop_decay`: `"cosine"` (default; to 0 at the schedule's `end`, constant if it has none)
      or `"constant"`.
    - `schedule`: when masks are updated (default `PeriodicSchedule(every=100)`).
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`. `prune(model)` prunes a denser model to the target by the drop score
    (start from a random mask with `StaticRandomSparse(...).prune(model, key=...)` instead).
    After every `update`, reset the optimizer moments of the regrown weights with
    `bmr_eqx.reset_regrown(opt_state, before, after)`.
    """
    return _drop_and_grow(Magnitude(), GradientMagnitude(), sparsity, distribution, sparsity_type, drop_fraction,
                          drop_decay, schedule, keep_dense)


def BMRDropAndGrow(
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    drop_fraction: float = 0.3, drop_decay: str = "cosine", schedule: AbstractSchedule = PeriodicSchedule(every=100),
    keep_dense: Any = (), grow: str = "gradient", curvature: str = "posterior",
) -> Pruner:
    """Bayesian drop-and-grow, for sparse training with IVON: at constant sparsity, every update
    drops the active weights whose removal costs the least evidence (highest ΔF of the spike reduced
    prior) and regrows as many inactive ones, by gradient magnitude (`grow="gradient"`; pass
    `grads=` as for `RigL`) or at random (`grow="random"`; pass `key=`). Needs a `Posterior`;
    regrown weights start at 0 with their curvature back at `hess_init`.

    **Arguments:**

    - `sparsity`: the constant fraction of pruned weights per leaf, in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"` (default), `"erk"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"` (default) or `"N:M"` (e.g. `"2:4"`, or `NByM(n, m, axis)`):
      every group of `m` keeps `n` through drop and grow.
    - `drop_fraction`: the fraction of active weights dropped (and regrown) per update at the start
      of the schedule's window, in `[0, 1]` (default 0.3).
    - `drop_decay`: `"cosine"` (default; to 0 at the schedule's `end`, constant if it has none)
      or `"constant"`.
    - `schedule`: when masks are updated (default `PeriodicSchedule(every=100)`).
    - `keep_dense`: leaf paths left dense.
    - `grow`: `"gradient"` (default) or `"random"`.
    - `curvature`: the curvature ΔF reads, `"posterior"` (default) or `"data"`.

    **Returns:** a `Pruner`. `prune(model)` prunes a denser model to the target by the drop score
    (start from a random mask with `StaticRandomSparse(...).prune(model, key=...)` instead).
    After every `update`, reset the optimizer moments of the regrown weights with
    `bmr_eqx.reset_regrown(opt_state, before, after)`.
    """
    if grow not in ("gradient", "random"):
        raise ValueError(f"grow must be 'gradient' (as RigL) or 'random' (as SET), got {grow!r}.")
    grow_score = GradientMagnitude() if grow == "gradient" else Random()
    return _drop_and_grow(Evidence(curvature), grow_score, sparsity, distribution, sparsity_type, drop_fraction,
                          drop_decay, schedule, keep_dense)

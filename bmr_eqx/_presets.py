"""The named algorithms: one-line presets of `Pruner`, with JaxPruner's and BMRPruner's names."""

from typing import Any

from ._distributions import Distribution
from ._pruner import Pruner
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule
from ._scores import Evidence, Magnitude, Normalized, PosteriorPrecision, Random, Saliency, SignalToNoise
from ._selection import AbstractStructure, NByM, SpikeAndSlab, Threshold, TopK, structure_and_selection

SparsityType = AbstractStructure | NByM | str
_ONCE = OneShotSchedule(0)


def _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, straight_through=False) -> Pruner:
    structure, selection = structure_and_selection(sparsity, distribution, sparsity_type)
    return Pruner(score, selection, structure, schedule, monotone, keep_dense, straight_through)


_ARGS = """
    **Arguments:**

    - `sparsity`: the final fraction of pruned weights (groups) in `[0, 1)`; omit for N:M.
    - `distribution`: `"uniform"`, `"erk"`, `"global"` or `{leaf path: sparsity or None}`.
    - `sparsity_type`: `"unstructured"`, `"channel"`, `"block"`, `"N:M"` (e.g. `"2:4"`), or an
      `Unstructured()` / `Channel(axis)` / `Block(shape)` / `NByM(n, m, axis)`.
    - `schedule`: when masks change (default `OneShotSchedule(0)`).
    - `monotone`: pruned weights never come back.
    - `keep_dense`: leaf paths left dense.

    **Returns:** a `Pruner`.
"""


def _doc(text: str) -> str:
    return text + "\n" + _ARGS


def NoPruning(*, keep_dense: Any = ()) -> Pruner:  # noqa: N802 - the algorithms' names are CamelCase presets
    """The dense baseline: masks stay all-ones (same interface as every pruner).

    **Arguments:** `keep_dense`: accepted for symmetry; every leaf stays dense anyway.

    **Returns:** a `Pruner`.
    """
    return Pruner(Magnitude(), TopK(0.0), schedule=NoUpdateSchedule(), keep_dense=keep_dense)


def MagnitudePruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    return _topk(Magnitude(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def SaliencyPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    return _topk(Saliency(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def RandomPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = True, keep_dense: Any = (),
) -> Pruner:
    return _topk(Random(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def GlobalMagnitudePruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (), normalize: bool = True,
) -> Pruner:
    score = Normalized(Magnitude()) if normalize else Magnitude()
    return _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def GlobalSaliencyPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (), normalize: bool = True,
) -> Pruner:
    score = Normalized(Saliency()) if normalize else Saliency()
    return _topk(score, sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def BMRPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = True, keep_dense: Any = (),
) -> Pruner:
    return _topk(Evidence(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def GlobalBMRPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "global", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = True, keep_dense: Any = (),
) -> Pruner:
    return _topk(Evidence(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def SteBMRPruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    return _topk(Evidence(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense, straight_through=True)


def UncertaintyMagnitudePruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    return _topk(SignalToNoise(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def PosteriorVariancePruning(  # noqa: N802
    *, sparsity: Any = None, distribution: Distribution = "uniform", sparsity_type: SparsityType = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = False, keep_dense: Any = (),
) -> Pruner:
    return _topk(PosteriorPrecision(), sparsity, distribution, sparsity_type, schedule, monotone, keep_dense)


def AdaptiveBMR(  # noqa: N802
    threshold: float = 0.0, method: str = "threshold", *, sparsity_type: AbstractStructure | str = "unstructured",
    schedule: AbstractSchedule = _ONCE, monotone: bool = True, keep_dense: Any = (),
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
    - `schedule`, `monotone` (default True), `keep_dense`: as for every pruner.

    **Returns:** a `Pruner`.
    """
    if method not in ("threshold", "spike_and_slab"):
        raise ValueError(f"AdaptiveBMR method must be 'threshold' or 'spike_and_slab', got {method!r}.")
    if isinstance(sparsity_type, NByM) or (isinstance(sparsity_type, str) and ":" in sparsity_type):
        raise ValueError("AdaptiveBMR lets the evidence set the sparsity; N:M fixes it. Use BMRPruning for N:M.")
    structure, _ = structure_and_selection(0.0, "uniform", sparsity_type)
    rule = Threshold(-float(threshold)) if method == "threshold" else SpikeAndSlab()
    return Pruner(Evidence(), rule, structure, schedule, monotone, keep_dense)


BayesianGlobalPruning = GlobalBMRPruning
"""The BMRPruner fork's name for `GlobalBMRPruning` (one global ranking by ΔF)."""

for _f, _text in (
    (MagnitudePruning, "Prune the weights of smallest magnitude |w|."),
    (SaliencyPruning, "Prune the weights of smallest saliency |w·∂L/∂w| (pass `grads=` to `update`/`prune`)."),
    (RandomPruning, "Prune random weights (pass `key=` to `update`/`prune`); monotone by default, so pruned "
                    "weights never come back."),
    (GlobalMagnitudePruning, "Magnitude pruning with one ranking across all prunable leaves. Scores are "
                             "L2-normalised per leaf (`normalize=True`, JaxPruner's default); `normalize=False` "
                             "ranks raw |w|."),
    (GlobalSaliencyPruning, "Saliency pruning with one ranking across all prunable leaves (scores L2-normalised "
                            "per leaf unless `normalize=False`)."),
    (BMRPruning, "Bayesian model reduction with a target: per leaf, keep the weights whose removal costs the most "
                 "evidence (rank by −ΔF of the spike reduced prior). With `sparsity_type=\"channel\"`, whole "
                 "neurons/filters are ranked by their group ΔF. Needs a `Posterior`; monotone by default."),
    (GlobalBMRPruning, "Bayesian model reduction with one ranking of raw ΔF across all leaves (ΔF is in nats in "
                       "every layer, so no normalisation). Needs a `Posterior`; monotone by default. "
                       "`BayesianGlobalPruning` is the BMRPruner fork's name for it."),
    (SteBMRPruning, "BMR with straight-through masks: pruned weights keep receiving gradients and may come back "
                    "when their ΔF drops. Needs `Posterior(Sparse(model, straight_through=True), ...)`; recompute "
                    "the masks often (e.g. `PeriodicSchedule(every=1)`)."),
    (UncertaintyMagnitudePruning, "Prune by signal-to-noise |μ|/σ: small and uncertain weights go first. "
                                  "Needs a `Posterior`."),
    (PosteriorVariancePruning, "Prune the weights the data informed least first: those whose posterior precision "
                               "stayed nearest the prior's (largest posterior variance). Needs a `Posterior`."),
):
    _f.__doc__ = _doc(_text)

"""BMRPruner's Bayesian pruners: they read the posterior (`hess`, `ess`, `weight_decay`) from the
wrapped optimizer's state (`sparse_state.inner_state[0]`: the state of `bmr_eqx.compat.ivon` or of
blrax's `ivon`) and score with `bmr_eqx`'s ΔF and posterior scores."""

import dataclasses

import jax

from ... import _masks, _scores
from .. import mask_calculator
from ..base_updater import BaseUpdater, leafwise_scores
from .global_pruners import GlobalPruningMixin
from .ste import SteMixin


def posterior_of(sparse_state, who):
    """`(hess, ess, weight_decay)` of the IVON state at `sparse_state.inner_state[0]`."""
    inner = None if sparse_state is None else sparse_state.inner_state
    state = inner[0] if isinstance(inner, tuple) and inner else inner
    if not all(hasattr(state, f) for f in ("hess", "ess", "weight_decay")):
        raise AttributeError(
            f"{who} reads the posterior from the wrapped optimizer's state (inner_state[0].hess, .ess, "
            f".weight_decay), but found {type(state).__name__}. Wrap an IVON optimizer: "
            "updater.wrap_optax(bmr_eqx.compat.ivon(...)), and score with the sparse state."
        )
    return state.hess, state.ess, state.weight_decay


@dataclasses.dataclass
class _PosteriorScored(BaseUpdater):
    """Scores a `bmr_eqx` posterior score over the wrapped IVON state's curvature."""

    _score = _scores.Evidence()

    def calculate_scores(self, params, sparse_state=None, grads=None, **kwargs):
        hess, ess, weight_decay = posterior_of(sparse_state, type(self).__name__)
        return leafwise_scores(self._score, params, hess=hess, ess=ess, weight_decay=weight_decay)


@dataclasses.dataclass
class BMRPruning(_PosteriorScored):
    """Bayesian model reduction: prune the weights whose removal costs the least evidence (rank by
    −ΔF of a spike at zero, per parameter, at the distribution's sparsity)."""


@dataclasses.dataclass
class AdaptiveBMR(BMRPruning):
    """Bayesian model reduction without a target: on each update, prune every weight whose ΔF
    exceeds `threshold` nats (0: the evidence prefers it gone); the best weight of each parameter is
    always kept. The distribution only says which parameters are pruned (non-None sparsity)."""

    threshold: float = 0.0

    def create_masks(self, scores, sparsities):
        def keep(score, sparsity):
            if sparsity is None:
                return None
            return _masks.keep_best(_masks.threshold_mask(score, -self.threshold), score).astype(
                mask_calculator.MASK_DTYPE
            )

        return jax.tree.map(keep, scores, sparsities)


@dataclasses.dataclass
class UncertaintyMagnitudePruning(_PosteriorScored):
    """Prune by signal-to-noise |μ|/σ: small, uncertain weights first."""

    _score = _scores.SignalToNoise()


@dataclasses.dataclass
class PosteriorVariancePruning(_PosteriorScored):
    """Prune the weights the data informed least first (largest posterior variance)."""

    _score = _scores.PosteriorPrecision()


@dataclasses.dataclass
class GlobalBMRPruning(GlobalPruningMixin, BMRPruning):
    """BMR with one global ranking of ΔF (in nats in every layer, so not normalised by default)."""

    use_normalization: bool = False


BayesianGlobalPruning = GlobalBMRPruning


@dataclasses.dataclass
class SteBMRPruning(SteMixin, BMRPruning):
    """Straight-through BMR: masks recomputed from ΔF at every step, dense weights keep training."""


AdaptiveBMRPruning = AdaptiveBMR
AbosluteZscorePruning = UncertaintyMagnitudePruning  # BMRPruner's class name (sic) for the same score

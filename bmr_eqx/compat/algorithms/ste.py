"""JaxPruner's straight-through pruners: dense weights keep training, the forward pass sees them
masked afresh at every step."""

import dataclasses

import jax

from .._tree import is_none
from . import pruners


@dataclasses.dataclass
class SteMixin:
    """Masks are recomputed in `pre_forward_update` at every step and never stored; the stored
    weights stay dense."""

    def pre_forward_update(self, params, opt_state):
        sparsities = self.scheduler.get_sparsity_at_step(opt_state.target_sparsities, opt_state.count)
        scores = self.calculate_scores(params, sparse_state=opt_state)
        return self.apply_masks(params, self.create_masks(scores, sparsities), is_packed=False)

    def get_initial_masks(self, params, target_sparsities):
        del target_sparsities
        return jax.tree.map(lambda _: None, params, is_leaf=is_none)

    def update_state(self, sparse_state, params, grads, **kwargs):
        del params, grads
        return sparse_state

    def post_gradient_update(self, params, opt_state):
        del opt_state
        return params


@dataclasses.dataclass
class SteMagnitudePruning(SteMixin, pruners.MagnitudePruning):
    """Straight-through magnitude pruning."""


@dataclasses.dataclass
class SteRandomPruning(SteMixin, pruners.RandomPruning):
    """Straight-through random pruning."""

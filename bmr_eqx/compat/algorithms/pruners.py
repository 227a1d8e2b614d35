"""JaxPruner's dense-to-sparse pruners, scoring with `bmr_eqx`'s scores."""

import dataclasses

import jax

from ... import _scores
from ..base_updater import BaseUpdater, leafwise_scores


@dataclasses.dataclass
class MagnitudePruning(BaseUpdater):
    """Prunes the weights of smallest magnitude |w|."""

    def calculate_scores(self, params, sparse_state=None, grads=None, **kwargs):
        return leafwise_scores(_scores.Magnitude(), params)


@dataclasses.dataclass
class SaliencyPruning(BaseUpdater):
    """Prunes the weights of smallest saliency |w·g| (needs `grads`)."""

    def calculate_scores(self, params, sparse_state=None, grads=None, **kwargs):
        if grads is None:
            raise ValueError("SaliencyPruning scores |w·g| and needs grads=.")
        return leafwise_scores(_scores.Saliency(), params, grads=grads)


def generate_random_scores(params, rng_seed):
    """Uniform random scores shaped like `params` (one key per leaf, split from `rng_seed`)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = treedef.unflatten(list(jax.random.split(rng_seed, max(1, len(leaves)))[: len(leaves)]))
    return leafwise_scores(_scores.Random(), params, keys=keys)


@dataclasses.dataclass
class RandomPruning(BaseUpdater):
    """Prunes at random; a new draw at every update step (already pruned weights score lowest)."""

    def calculate_scores(self, params, sparse_state=None, grads=None, **kwargs):
        if sparse_state is None:
            return generate_random_scores(params, self.rng_seed)
        scores = generate_random_scores(params, jax.random.fold_in(self.rng_seed, sparse_state.count))
        return self.apply_masks(scores, sparse_state.masks)



"""JaxPruner's global pruners: one ranking across all selected parameters (`bmr_eqx`'s global top-k)."""

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from ... import _masks
from .. import mask_calculator, sparsity_distributions, sparsity_types
from .._tree import flat_items
from ..base_updater import SparseState, _pack
from . import pruners


def _order(key):
    return [(0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in key]


@dataclasses.dataclass
class GlobalPruningMixin:
    """One top-k over the scores of every parameter `filter_fn(key, param)` selects, each
    normalised by its L2 norm first (`use_normalization`); parameters in `custom_sparsity_map`
    are pruned on their own at their sparsity, the others stay dense."""

    custom_sparsity_map: Optional[dict] = None
    filter_fn: Any = sparsity_distributions.NOT_DIM_ONE_FILTER_FN
    normalization_eps: float = 1e-8
    use_normalization: bool = True
    sparsity: float = 0.0

    _sparsity_is_global = True

    def _check_unstructured(self):
        if not isinstance(self.sparsity_type, sparsity_types.Unstructured):
            raise AttributeError(
                f"Sparsity type {type(self.sparsity_type).__name__} is not supported for global pruning; "
                "use sparsity_types.Unstructured()."
            )

    def init_state(self, params):
        self._check_unstructured()
        masks = self.create_masks(params, 0.0)
        return SparseState(
            masks=_pack(masks) if self.use_packed_masks else masks,
            target_sparsities=self.sparsity,
            count=jnp.zeros([], jnp.int32),
        )

    def instant_sparsify(self, params, grads=None, **kwargs):
        self._check_unstructured()
        scores = self.calculate_scores(params, grads=grads, **kwargs)
        masks = self.create_masks(scores, self.sparsity)
        pruned = self.apply_masks(params, masks, is_packed=False)
        return pruned, (_pack(masks) if self.use_packed_masks else masks)

    def create_masks(self, scores, target_sparsity):
        """Masks from one global ranking at `target_sparsity`."""
        custom = self.custom_sparsity_map or {}
        items, treedef = flat_items(scores)
        ranked = sorted((k for k, s in items if s is not None and k not in custom and self.filter_fn(k, s)), key=_order)
        by_key = dict(items)

        def prepared(s):
            s = jnp.asarray(s)
            return s / (jnp.linalg.norm(s.reshape(-1)) + self.normalization_eps) if self.use_normalization else s

        masks = {}
        if ranked:
            keep = _masks.global_topk_masks([prepared(by_key[k]) for k in ranked], target_sparsity)
            masks = {k: m.astype(mask_calculator.MASK_DTYPE) for k, m in zip(ranked, keep)}
        for k, s in items:
            if k in custom and s is not None:
                masks[k] = self.topk_fn(s, custom[k])
        return treedef.unflatten([masks.get(k) for k, _ in items])


@dataclasses.dataclass
class GlobalMagnitudePruning(GlobalPruningMixin, pruners.MagnitudePruning):
    """Magnitude pruning with one global ranking."""


@dataclasses.dataclass
class GlobalSaliencyPruning(GlobalPruningMixin, pruners.SaliencyPruning):
    """Saliency pruning with one global ranking."""

"""bmr_eqx: pruning for Equinox models, with masks inside the model pytree."""

from ._algorithms import (
    AbstractPruner as AbstractPruner,
    GlobalMagnitudePruning as GlobalMagnitudePruning,
    GlobalSaliencyPruning as GlobalSaliencyPruning,
    MagnitudePruning as MagnitudePruning,
    NoPruning as NoPruning,
    RandomPruning as RandomPruning,
    SaliencyPruning as SaliencyPruning,
)
from ._distributions import erk_sparsities as erk_sparsities, leaf_sparsities as leaf_sparsities
from ._masks import (
    AbstractSparsityType as AbstractSparsityType,
    Block as Block,
    Channel as Channel,
    NByM as NByM,
    Unstructured as Unstructured,
    global_topk_masks as global_topk_masks,
    threshold_mask as threshold_mask,
    topk_mask as topk_mask,
)
from ._metrics import mask_intersection as mask_intersection, sparsity_summary as sparsity_summary
from ._optim import mask_gradients as mask_gradients, mask_updates as mask_updates, masked_updates as masked_updates
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    NoUpdateSchedule as NoUpdateSchedule,
    OneShotSchedule as OneShotSchedule,
    PeriodicSchedule as PeriodicSchedule,
    PolynomialSchedule as PolynomialSchedule,
)
from ._sparse import Sparse as Sparse
from ._trainable import trainable as trainable

__version__ = "0.1.0"

"""bmr_eqx: pruning for Equinox models, with masks inside the model pytree."""

from ._algorithms import (
    AbstractPruner as AbstractPruner,
    AdaptiveBMR as AdaptiveBMR,
    BayesianGlobalPruning as BayesianGlobalPruning,
    BMRPruning as BMRPruning,
    GlobalBMRPruning as GlobalBMRPruning,
    Leaf as Leaf,
    PosteriorVariancePruning as PosteriorVariancePruning,
    SteBMRPruning as SteBMRPruning,
    UncertaintyMagnitudePruning as UncertaintyMagnitudePruning,
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
from ._metrics import (
    accuracy as accuracy,
    classification_metrics as classification_metrics,
    expected_calibration_error as expected_calibration_error,
    mask_intersection as mask_intersection,
    nll as nll,
    sparsity_summary as sparsity_summary,
)
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
from ._bmr import (
    delta_f_gaussian as delta_f_gaussian,
    delta_f_spike as delta_f_spike,
    group_delta_f as group_delta_f,
    posterior_delta_f as posterior_delta_f,
    reduced_posterior as reduced_posterior,
    spike_and_slab_mask as spike_and_slab_mask,
    spike_and_slab_threshold as spike_and_slab_threshold,
)
from ._ivon import IVONState as IVONState, ivon as ivon, noisy_value_and_grad as noisy_value_and_grad
from ._posterior import Posterior as Posterior

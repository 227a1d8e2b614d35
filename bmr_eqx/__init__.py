"""bmr_eqx: pruning for Equinox models, with masks inside the model pytree, and Bayesian model
reduction of IVON-trained posteriors."""

from ._bmr import (
    delta_f_gaussian as delta_f_gaussian,
)
from ._bmr import (
    delta_f_spike as delta_f_spike,
)
from ._bmr import (
    group_delta_f as group_delta_f,
)
from ._bmr import (
    posterior_delta_f as posterior_delta_f,
)
from ._bmr import (
    reduced_posterior as reduced_posterior,
)
from ._bmr import (
    spike_and_slab_mask as spike_and_slab_mask,
)
from ._bmr import (
    spike_and_slab_threshold as spike_and_slab_threshold,
)
from ._distributions import erk_sparsities as erk_sparsities
from ._distributions import leaf_sparsities as leaf_sparsities
from ._ivon import IVONState as IVONState
from ._ivon import ivon as ivon
from ._ivon import noisy_value_and_grad as noisy_value_and_grad
from ._masks import global_topk_masks as global_topk_masks
from ._masks import threshold_mask as threshold_mask
from ._masks import topk_mask as topk_mask
from ._metrics import (
    accuracy as accuracy,
)
from ._metrics import (
    classification_metrics as classification_metrics,
)
from ._metrics import (
    expected_calibration_error as expected_calibration_error,
)
from ._metrics import (
    mask_intersection as mask_intersection,
)
from ._metrics import (
    nll as nll,
)
from ._metrics import (
    sparsity_summary as sparsity_summary,
)
from ._optim import mask_gradients as mask_gradients
from ._optim import masked_updates as masked_updates
from ._posterior import Posterior as Posterior
from ._presets import (
    AdaptiveBMR as AdaptiveBMR,
)
from ._presets import (
    BayesianGlobalPruning as BayesianGlobalPruning,
)
from ._presets import (
    BMRPruning as BMRPruning,
)
from ._presets import (
    GlobalBMRPruning as GlobalBMRPruning,
)
from ._presets import (
    GlobalMagnitudePruning as GlobalMagnitudePruning,
)
from ._presets import (
    GlobalSaliencyPruning as GlobalSaliencyPruning,
)
from ._presets import (
    MagnitudePruning as MagnitudePruning,
)
from ._presets import (
    NoPruning as NoPruning,
)
from ._presets import (
    PosteriorVariancePruning as PosteriorVariancePruning,
)
from ._presets import (
    RandomPruning as RandomPruning,
)
from ._presets import (
    SaliencyPruning as SaliencyPruning,
)
from ._presets import (
    SteBMRPruning as SteBMRPruning,
)
from ._presets import (
    UncertaintyMagnitudePruning as UncertaintyMagnitudePruning,
)
from ._pruner import Pruner as Pruner
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
)
from ._schedules import (
    NoUpdateSchedule as NoUpdateSchedule,
)
from ._schedules import (
    OneShotSchedule as OneShotSchedule,
)
from ._schedules import (
    PeriodicSchedule as PeriodicSchedule,
)
from ._schedules import (
    PolynomialSchedule as PolynomialSchedule,
)
from ._scores import (
    AbstractScore as AbstractScore,
)
from ._scores import (
    Evidence as Evidence,
)
from ._scores import (
    Leaf as Leaf,
)
from ._scores import (
    Magnitude as Magnitude,
)
from ._scores import (
    Normalized as Normalized,
)
from ._scores import (
    PosteriorPrecision as PosteriorPrecision,
)
from ._scores import (
    Random as Random,
)
from ._scores import (
    Saliency as Saliency,
)
from ._scores import (
    SignalToNoise as SignalToNoise,
)
from ._selection import (
    AbstractSelection as AbstractSelection,
)
from ._selection import (
    AbstractStructure as AbstractStructure,
)
from ._selection import (
    Block as Block,
)
from ._selection import (
    Channel as Channel,
)
from ._selection import (
    NByM as NByM,
)
from ._selection import (
    SpikeAndSlab as SpikeAndSlab,
)
from ._selection import (
    Threshold as Threshold,
)
from ._selection import (
    TopK as TopK,
)
from ._selection import (
    Unit as Unit,
)
from ._selection import (
    Unstructured as Unstructured,
)
from ._sparse import Sparse as Sparse
from ._tree import trainable as trainable

__version__ = "0.2.0"

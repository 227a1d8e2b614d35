"""bmr_eqx: pruning for Equinox models, with masks inside the model pytree, and Bayesian model
reduction of IVON-trained posteriors."""

from ._bmr import (
    delta_f_gaussian as delta_f_gaussian,
    delta_f_spike as delta_f_spike,
    full_covariance_reduction as full_covariance_reduction,
    group_delta_f as group_delta_f,
    posterior_delta_f as posterior_delta_f,
    reduced_posterior as reduced_posterior,
    spike_and_slab_mask as spike_and_slab_mask,
    spike_and_slab_threshold as spike_and_slab_threshold,
)
from ._compact import compact as compact
from ._curvature import (
    curvature_report as curvature_report,
    laplace_posterior as laplace_posterior,
    refresh_curvature as refresh_curvature,
)
from ._distributions import erk_sparsities as erk_sparsities, leaf_sparsities as leaf_sparsities
from ._export import NMMatrix as NMMatrix, to_bcoo as to_bcoo
from ._groups import Coupled as Coupled, Group as Group, Member as Member, dependency_groups as dependency_groups
from ._ivon import IVONState as IVONState, ivon as ivon, noisy_value_and_grad as noisy_value_and_grad
from ._masks import global_topk_masks as global_topk_masks, threshold_mask as threshold_mask, topk_mask as topk_mask
from ._metrics import (
    accuracy as accuracy,
    classification_metrics as classification_metrics,
    expected_calibration_error as expected_calibration_error,
    mask_intersection as mask_intersection,
    nll as nll,
    sparsity_summary as sparsity_summary,
)
from ._oneshot import (
    InputStats as InputStats,
    PerRow as PerRow,
    Wanda as Wanda,
    WandaPruning as WandaPruning,
    input_statistics as input_statistics,
    sparsegpt as sparsegpt,
)
from ._optim import mask_gradients as mask_gradients, masked_updates as masked_updates, reset_regrown as reset_regrown
from ._posterior import Posterior as Posterior
from ._presets import (
    SET as SET,
    AdaptiveBMR as AdaptiveBMR,
    BayesianGlobalPruning as BayesianGlobalPruning,
    BMRDropAndGrow as BMRDropAndGrow,
    BMRPruning as BMRPruning,
    GlobalBMRPruning as GlobalBMRPruning,
    GlobalMagnitudePruning as GlobalMagnitudePruning,
    GlobalSaliencyPruning as GlobalSaliencyPruning,
    MagnitudePruning as MagnitudePruning,
    NoPruning as NoPruning,
    PosteriorVariancePruning as PosteriorVariancePruning,
    RandomPruning as RandomPruning,
    RigL as RigL,
    SaliencyPruning as SaliencyPruning,
    StaticRandomSparse as StaticRandomSparse,
    SteBMRPruning as SteBMRPruning,
    SteMagnitudePruning as SteMagnitudePruning,
    SteRandomPruning as SteRandomPruning,
    UncertaintyMagnitudePruning as UncertaintyMagnitudePruning,
)
from ._pruner import Pruner as Pruner
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    NoUpdateSchedule as NoUpdateSchedule,
    OneShotSchedule as OneShotSchedule,
    PeriodicSchedule as PeriodicSchedule,
    PolynomialSchedule as PolynomialSchedule,
)
from ._scores import (
    AbstractScore as AbstractScore,
    Evidence as Evidence,
    GradientMagnitude as GradientMagnitude,
    Leaf as Leaf,
    Magnitude as Magnitude,
    Normalized as Normalized,
    PosteriorPrecision as PosteriorPrecision,
    Random as Random,
    Saliency as Saliency,
    SignalToNoise as SignalToNoise,
)
from ._selection import (
    AbstractSelection as AbstractSelection,
    AbstractStructure as AbstractStructure,
    Block as Block,
    Channel as Channel,
    DropAndGrow as DropAndGrow,
    NByM as NByM,
    SpikeAndSlab as SpikeAndSlab,
    Threshold as Threshold,
    TopK as TopK,
    Unit as Unit,
    Unstructured as Unstructured,
)
from ._sharding import shard as shard
from ._sites import straight_through as straight_through
from ._sparse import Sparse as Sparse
from ._tree import trainable as trainable

__version__ = "0.2.0"

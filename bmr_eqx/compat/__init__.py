"""JaxPruner's, BMRPruner's and blrax's interfaces over `bmr_eqx`.

Code written for them runs by changing its import::

    import bmr_eqx.compat as jaxpruner          # or: as bmrpruner
    import bmr_eqx.compat.blrax as blrax

The submodules mirror JaxPruner's (`api`, `base_updater`, `mask_calculator`,
`sparsity_distributions`, `sparsity_schedules`, `sparsity_types`, `utils`, `algorithms`). Masks
live in the optimizer state, as there; the top-k, distributions, schedules, scores, ΔF and IVON
are `bmr_eqx`'s. See the docs' "Migrating from JaxPruner / BMRPruner" page for the differences.
"""

from . import (
    algorithms as algorithms,
    api as api,
    base_updater as base_updater,
    blrax as blrax,
    mask_calculator as mask_calculator,
    sparsity_distributions as sparsity_distributions,
    sparsity_schedules as sparsity_schedules,
    sparsity_types as sparsity_types,
    utils as utils,
)
from .algorithms import *  # noqa: F403
from .api import (
    ALGORITHM_REGISTRY as ALGORITHM_REGISTRY,
    all_algorithm_names as all_algorithm_names,
    create_updater_from_config as create_updater_from_config,
    register_algorithm as register_algorithm,
)
from .base_updater import (
    BaseUpdater as BaseUpdater,
    NoPruning as NoPruning,
    SparseState as SparseState,
    apply_mask as apply_mask,
)
from .blrax import ivon as ivon, noisy_value_and_grad as noisy_value_and_grad
from .sparsity_schedules import (
    NoUpdateSchedule as NoUpdateSchedule,
    OneShotSchedule as OneShotSchedule,
    PeriodicSchedule as PeriodicSchedule,
    PolynomialSchedule as PolynomialSchedule,
)
from .sparsity_types import SparsityType as SparsityType
from .utils import summarize_intersection as summarize_intersection, summarize_sparsity as summarize_sparsity

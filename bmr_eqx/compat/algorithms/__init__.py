"""JaxPruner's and BMRPruner's algorithms."""

from .bmr_pruners import (
    AdaptiveBMR as AdaptiveBMR,
    BayesianGlobalPruning as BayesianGlobalPruning,
    BMRPruning as BMRPruning,
    GlobalBMRPruning as GlobalBMRPruning,
    PosteriorVariancePruning as PosteriorVariancePruning,
    SteBMRPruning as SteBMRPruning,
    UncertaintyMagnitudePruning as UncertaintyMagnitudePruning,
)
from .global_pruners import (
    GlobalMagnitudePruning as GlobalMagnitudePruning,
    GlobalSaliencyPruning as GlobalSaliencyPruning,
)
from .pruners import (
    MagnitudePruning as MagnitudePruning,
    RandomPruning as RandomPruning,
    SaliencyPruning as SaliencyPruning,
)
from .sparse_trainers import SET as SET, RigL as RigL, StaticRandomSparse as StaticRandomSparse
from .ste import SteMagnitudePruning as SteMagnitudePruning, SteRandomPruning as SteRandomPruning

__all__ = [
    "AdaptiveBMR", "BayesianGlobalPruning", "BMRPruning", "GlobalBMRPruning", "GlobalMagnitudePruning",
    "GlobalSaliencyPruning", "MagnitudePruning", "PosteriorVariancePruning", "RandomPruning", "RigL", "SET",
    "SaliencyPruning", "StaticRandomSparse", "SteBMRPruning", "SteMagnitudePruning", "SteRandomPruning",
    "UncertaintyMagnitudePruning",
]

"""Scores: what makes one pruning algorithm differ from another. Higher score = kept longer."""

import abc
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._bmr import delta_f_spike


class Leaf(NamedTuple):
    """What a score sees of one prunable leaf.

    - `path`: its plain path, e.g. `"layers[0].weight"` (`"encoder.layers[0].weight"` for a
      `Sparse` encoder inside a bigger module);
    - `weight`: the (mean) weight, pruned entries at 0 (for a straight-through `Sparse`: the dense
      stored weight, which keeps training);
    - `mask`: its current mask;
    - `grad`: its gradient (None unless `grads=` was given);
    - `key`: a PRNG key for this leaf (None unless `key=` was given);
    - `hess`, `ess`, `weight_decay`: the posterior's curvature and prior (None unless the leaf is in
      a `Posterior`);
    - `data_hess`: the curvature with the initial value `hess_init` removed
      (`Posterior.data_hess`; None unless the leaf is in a `Posterior`).
    """

    path: str
    weight: Array
    mask: Array
    grad: Array | None = None
    key: PRNGKeyArray | None = None
    hess: Array | None = None
    ess: float | None = None
    weight_decay: float | None = None
    data_hess: Array | None = None


class AbstractScore(eqx.Module):
    """A leaf-wise score: `score(leaf) -> array shaped like leaf.weight`, higher = keep.

    A new pruning algorithm is a new score: subclass this, set `requires` to the `Leaf` fields
    the score reads beyond `weight` and `mask` (`"grad"`, `"key"`, `"hess"`), and use it in
    `bmr_eqx.Pruner(MyScore(), bmr_eqx.TopK(0.9))`. The pruner checks that they are given.
    """

    requires: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def __call__(self, leaf: Leaf) -> Array:
        """The scores of one leaf, shaped like `leaf.weight`."""


class Magnitude(AbstractScore):
    """|w|: the weights nearest zero go first (no extra inputs needed)."""

    def __call__(self, leaf: Leaf) -> Array:
        return jnp.abs(leaf.weight)


class Saliency(AbstractScore):
    """|w·g|: the first-order Taylor estimate of the loss change from removing w (needs `grads=`)."""

    requires: ClassVar[tuple[str, ...]] = ("grad",)

    def __call__(self, leaf: Leaf) -> Array:
        return jnp.abs(leaf.weight * leaf.grad)


class GradientMagnitude(AbstractScore):
    """|g|: the weights whose gradient is largest come first (needs `grads=`). RigL grows by it,
    from the gradient with respect to the masked weights, which is dense even where the mask is 0:
    take it through `bmr_eqx.straight_through(model)`."""

    requires: ClassVar[tuple[str, ...]] = ("grad",)

    def __call__(self, leaf: Leaf) -> Array:
        return jnp.abs(leaf.grad)


class Random(AbstractScore):
    """Uniform random scores (needs `key=`)."""

    requires: ClassVar[tuple[str, ...]] = ("key",)

    def __call__(self, leaf: Leaf) -> Array:
        return jax.random.uniform(leaf.key, leaf.weight.shape)


CURVATURES = ("posterior", "data")


class _PosteriorScore(AbstractScore):
    """A score that reads the posterior's curvature: `curvature="posterior"` (IVON's h as trained)
    or `"data"` (`Posterior.data_hess()`, h with the initial value removed)."""

    curvature: str = "posterior"
    requires: ClassVar[tuple[str, ...]] = ("hess",)

    def __check_init__(self):
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}.")

    def _h(self, leaf: Leaf) -> Array:
        return leaf.hess if self.curvature == "posterior" else leaf.data_hess


class Evidence(_PosteriorScore):
    """−ΔF of switching each weight off (the spike reduced prior; see the docs' BMR page): high =
    the evidence wants the weight kept. Needs a `Posterior`.

    **Arguments:** `curvature`: `"posterior"` (default: IVON's h, the posterior as trained) or
    `"data"` (h with the initial value removed; see the docs' Bayesian pruners page for what each
    gives).
    """

    def __call__(self, leaf: Leaf) -> Array:
        return -delta_f_spike(leaf.weight, self._h(leaf), leaf.ess, leaf.weight_decay)


class SignalToNoise(_PosteriorScore):
    """|μ|/σ with σ = 1/sqrt(λ(h + δ)). Needs a `Posterior`.

    **Arguments:** `curvature`: as for `Evidence`.
    """

    def __call__(self, leaf: Leaf) -> Array:
        return jnp.abs(leaf.weight) * jnp.sqrt(leaf.ess * (self._h(leaf) + leaf.weight_decay))


class PosteriorPrecision(_PosteriorScore):
    """The curvature h: the weights the data informed least (posterior precision λ(h + δ) nearest
    the prior's λδ, the largest posterior variance) go first. Needs a `Posterior`.

    **Arguments:** `curvature`: as for `Evidence`.
    """

    def __call__(self, leaf: Leaf) -> Array:
        return self._h(leaf)


class Normalized(AbstractScore):
    """`score / (‖score‖₂ + eps)` per leaf: puts leaves on one scale before a global ranking (as
    JaxPruner's global pruners do).

    **Arguments:** `score`, the score to normalise; `eps`, added to the norm.
    """

    score: AbstractScore
    eps: float = 1e-8

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.score.requires

    def __call__(self, leaf: Leaf) -> Array:
        s = self.score(leaf)
        return s / (jnp.linalg.norm(s.reshape(-1)) + self.eps)

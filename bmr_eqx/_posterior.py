"""`Posterior`: a mean-field Gaussian posterior over a model's trainable weights."""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._optim import mask_tree, mask_updates
from ._select import PyTree, is_none
from ._trainable import trainable


def check_prior(ess: float | int, weight_decay: float | int) -> None:
    """Reject an effective sample size or weight decay (prior precision per example) that is not > 0."""
    for name, value in (("ess", ess), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(
                f"{name} must be a number > 0, got {value!r}: the prior N(0, 1/(ess·weight_decay)) needs a "
                "positive precision (ess is usually the training-set size)."
            )


class Posterior(eqx.Module):
    """A mean-field Gaussian posterior `q(θ) = N(mean, 1/(ess·(hess + weight_decay)))` over the
    trainable leaves of a model, with prior `N(0, 1/(ess·weight_decay))` (BMR.md §1).

    **Fields:**

    - `mean`: the model holding the posterior means (any model, usually a `Sparse`).
    - `hess`: IVON's diagonal curvature `h`, a tree shaped like `bmr_eqx.trainable(mean)`.
      It is a posterior statistic, not a parameter: `bmr_eqx.trainable` leaves it out.
    - `ess`: the effective sample size λ (usually the training-set size).
    - `weight_decay`: δ, the prior precision per example.
    - `hess_init`: the initial curvature (used by `ivon(rescale_lr=True)`).

    Calling a `Posterior` calls the mean model. Pruned weights of a `Sparse` mean are never
    sampled away from 0.
    """

    mean: PyTree
    hess: PyTree
    ess: float = eqx.field(static=True)
    weight_decay: float = eqx.field(static=True)
    hess_init: float = eqx.field(static=True)
    statistics_fields: ClassVar[tuple[str, ...]] = ("hess",)

    def __init__(
        self, mean: PyTree, *, ess: float | int, weight_decay: float | int = 1e-4, hess_init: float | int = 1.0, hess: PyTree = None
    ):
        check_prior(ess, weight_decay)
        if isinstance(hess_init, bool) or not isinstance(hess_init, (int, float)) or hess_init < 0:
            raise ValueError(f"hess_init must be a number >= 0, got {hess_init!r}.")
        if isinstance(mean, Posterior):
            raise TypeError("The model is already a Posterior.")
        self.mean = mean
        self.ess = float(ess)
        self.weight_decay = float(weight_decay)
        self.hess_init = float(hess_init)
        if hess is None:
            hess = jax.tree.map(lambda w: jnp.full(w.shape, hess_init, w.dtype), trainable(mean))
        self.hess = hess

    def __check_init__(self):
        try:
            jax.tree.structure(trainable(self.mean)).flatten_up_to(self.hess)
        except (ValueError, TypeError):
            raise ValueError("hess must have the structure of bmr_eqx.trainable(mean).") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the mean model."""
        return self.mean(*args, **kwargs)

    def precision(self) -> PyTree:
        """The posterior precision `ess·(hess + weight_decay)` of every trainable weight."""
        return jax.tree.map(lambda h: self.ess * (h + self.weight_decay), self.hess)

    def std(self) -> PyTree:
        """The posterior standard deviation `σ = 1/sqrt(ess·(hess + weight_decay))`."""
        return jax.tree.map(lambda h: jax.lax.rsqrt(self.ess * (h + self.weight_decay)), self.hess)

    def noise(self, key: PRNGKeyArray) -> PyTree:
        """Standard normal noise `ε` shaped like `hess`, exactly 0 on pruned weights."""
        leaves, treedef = jax.tree.flatten(self.hess)
        keys = jax.random.split(key, max(1, len(leaves)))
        eps = treedef.unflatten([jax.random.normal(k, h.shape, h.dtype) for k, h in zip(keys, leaves)])
        return jax.tree.map(
            lambda e, m: e if m is None else jnp.where(m, e, jnp.zeros((), e.dtype)),
            eps,
            mask_tree(self.mean),
            is_leaf=is_none,
        )

    def perturbed(self, eps: PyTree) -> PyTree:
        """The mean model moved to `mean + σ·eps` (pruned weights stay exactly 0)."""
        shift = jax.tree.map(lambda e, s: e * s, eps, self.std())
        return eqx.apply_updates(self.mean, mask_updates(shift, self.mean))

    def sample(self, key: PRNGKeyArray) -> PyTree:
        """A model drawn from q (same type as `mean`)."""
        return self.perturbed(self.noise(key))

    def predict(self, fn: Callable[[PyTree], Array], key: PRNGKeyArray, num_samples: int = 8) -> Array:
        """The posterior predictive `E_q[fn(model)]` averaged over `num_samples` sampled models.

        **Arguments:**

        - `fn`: maps a model to outputs, e.g. `lambda m: jax.nn.softmax(jax.vmap(m)(x))`.
        - `key`: a PRNG key.
        - `num_samples`: how many models to draw.
        """
        keys = jax.random.split(key, num_samples)
        return jax.lax.map(lambda k: fn(self.sample(k)), keys).mean(0)

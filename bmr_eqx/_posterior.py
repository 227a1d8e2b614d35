"""`Posterior`: a mean-field Gaussian posterior over a model's trainable weights."""

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ._tree import AbstractWrapper, PyTree, is_wrapper, keep_pruned_at_zero, trainable_params, unflatten_like_trainable


def check_prior(ess: Any, weight_decay: Any) -> None:
    """Reject an effective sample size or weight decay (prior precision per example) that is not > 0.
    Scalar arrays are accepted (a traced one is not checked)."""
    for name, value in (("ess", ess), ("weight_decay", weight_decay)):
        if isinstance(value, jax.core.Tracer) and value.shape == ():
            continue
        if isinstance(value, (jax.Array, np.ndarray)) and value.shape == () and not isinstance(value, bool):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(
                f"{name} must be a number > 0, got {value!r}: the prior N(0, 1/(ess·weight_decay)) needs a "
                "positive precision (ess is usually the training-set size)."
            )


def hess_dtype(dtype: Any) -> Any:
    """The curvature's dtype for weights of `dtype`: at least float32. IVON averages with weight
    `1 − b2` (1e-5 by default), which a bfloat16 curvature would round away entirely."""
    return jnp.promote_types(dtype, jnp.float32)


def data_curvature(hess: Array, init_weight: Array, hess_init: float) -> Array:
    """`(h − w·h0)/(1 − w)` where `w < 1`, else 0 (see `Posterior.data_hess`)."""
    w = jnp.asarray(init_weight, jnp.float32)
    learnt = w < 1
    denom = jnp.where(learnt, 1 - w, 1.0)
    out = (hess.astype(jnp.float32) - w * hess_init) / denom
    return jnp.where(learnt, out, 0.0).astype(hess.dtype)


class Posterior(AbstractWrapper):
    """A mean-field Gaussian posterior `q(θ) = N(mean, 1/(ess·(hess + weight_decay)))` over the
    trainable leaves of a model, with prior `N(0, 1/(ess·weight_decay))` (see the docs' IVON and
    BMR theory pages).

    **Fields:**

    - `mean`: the model holding the posterior means (any model; it may be or hold `Sparse` models).
    - `hess`: IVON's diagonal curvature `h` of every trainable weight, a dict keyed by the weight's
      path (`"layers[0].weight"`; the `.model` hop of a `Sparse` is left out, as in
      `sparsity_summary`), in float32 at least (also for a bfloat16 mean). It is a posterior statistic, not a parameter: `bmr_eqx.trainable` leaves
      it out.
    - `ess`: the effective sample size λ (usually the training-set size).
    - `weight_decay`: δ, the prior precision per example.
    - `hess_init`: the initial curvature (used by `ivon(rescale_lr=True)`).
    - `init_weight`: the weight that `hess_init` still has in `hess` (a scalar array): 1 for a new
      posterior, `b2^n` after n curvature updates of `ivon`, 0 once the curvature was computed
      from data (`hess=` given, or `refresh_curvature`). `data_hess()` removes that part.

    Calling a `Posterior` calls the mean model. Pruned weights of a `Sparse` mean are never
    sampled away from 0.

    **Arguments:** `mean`, `ess`, `weight_decay` (default 1e-4), `hess_init` (default 1.0) as above;
    `hess`: start from this curvature instead of `hess_init` everywhere; `init_weight`: the weight
    of `hess_init` in it (default: 1 without `hess`, 0 with it).
    """

    mean: PyTree
    hess: dict[str, Any]
    ess: float = eqx.field(static=True)
    weight_decay: float = eqx.field(static=True)
    hess_init: float = eqx.field(static=True)
    init_weight: Array

    def __init__(
        self,
        mean: PyTree,
        *,
        ess: float | int,
        weight_decay: float | int = 1e-4,
        hess_init: float | int = 1.0,
        hess: Mapping[str, Any] | None = None,
        init_weight: Any = None,
    ):
        check_prior(ess, weight_decay)
        if isinstance(hess_init, bool) or not isinstance(hess_init, (int, float)) or hess_init < 0:
            raise ValueError(f"hess_init must be a number >= 0, got {hess_init!r}.")
        if any(isinstance(x, Posterior) for x in jax.tree.leaves(mean, is_leaf=is_wrapper)):
            raise TypeError("The model already holds a Posterior; a Posterior cannot hold another.")
        self.mean = mean
        self.ess = float(ess)
        self.weight_decay = float(weight_decay)
        self.hess_init = float(hess_init)
        if init_weight is None:
            init_weight = 1.0 if hess is None else 0.0
        if hess is None:
            hess = {p.path: jnp.full(p.leaf.shape, hess_init, hess_dtype(p.leaf.dtype)) for p in trainable_params(mean)}
        self.hess = dict(hess)
        self.init_weight = jnp.asarray(init_weight, jnp.float32)

    def __check_init__(self):
        ps = {p.path: p.leaf for p in trainable_params(self.mean)}
        if set(ps) != set(self.hess):
            missing, extra = sorted(set(ps) - set(self.hess)), sorted(set(self.hess) - set(ps))
            raise ValueError(
                f"hess must have one entry per trainable weight of mean; missing {missing[:5]}, unknown {extra[:5]}."
            )
        for path, h in self.hess.items():
            if getattr(h, "shape", None) != ps[path].shape:
                raise ValueError(f"hess of `{path}` has shape {getattr(h, 'shape', None)}, the weight {ps[path].shape}.")

    def inner(self) -> PyTree:
        return self.mean

    def without_statistics(self) -> "Posterior":
        return eqx.tree_at(
            lambda p: (p.hess, p.init_weight), self, ({k: None for k in self.hess}, None), is_leaf=lambda x: x is None
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the mean model."""
        return self.mean(*args, **kwargs)

    def data_hess(self) -> dict[str, Array]:
        """The curvature with the initial value removed, by path: what the data taught.

        `ivon` keeps `h` as an exponential average started at `hess_init`: after n curvature
        updates `h = w·h0 + (1 − w)·D` with `w = b2^n` (`init_weight`) and `D` the average of the
        updates' data terms (the estimates ĥ plus IVON's small positivity correction, weighted as
        the average weights them). So `D = (h − w·h0)/(1 − w)` exactly, like Adam's bias correction.
        Where nothing was learnt yet (`w = 1`) it is 0. BMR scores use this curvature.

        **Returns:** a dict from path to the data curvature (may be slightly negative where the
        noisy estimates average below 0; ΔF treats negative curvature as 0).
        """
        w = self.init_weight
        return {k: data_curvature(h, w, self.hess_init) for k, h in self.hess.items()}

    def precision(self) -> dict[str, Array]:
        """The posterior precision `ess·(hess + weight_decay)` of every trainable weight, by path."""
        return {k: self.ess * (h + self.weight_decay) for k, h in self.hess.items()}

    def std(self) -> dict[str, Array]:
        """The posterior standard deviation `σ = 1/sqrt(ess·(hess + weight_decay))`, by path."""
        return {k: jax.lax.rsqrt(self.ess * (h + self.weight_decay)) for k, h in self.hess.items()}

    def noise(self, key: PRNGKeyArray) -> dict[str, Array]:
        """Standard normal noise `ε` of every trainable weight (by path), exactly 0 on pruned weights."""
        ps = trainable_params(self.mean)
        keys = jax.random.split(key, max(1, len(ps)))
        out = {}
        for p, k in zip(ps, keys):
            e = jax.random.normal(k, p.leaf.shape, p.leaf.dtype)  # noise in the weights' dtype
            out[p.path] = e if p.mask is None else jnp.where(p.mask, e, jnp.zeros((), e.dtype))
        return out

    def perturbed(self, eps: Mapping[str, Array]) -> PyTree:
        """The mean model moved to `mean + σ·eps` (pruned weights stay exactly 0)."""
        ps = trainable_params(self.mean)
        std = self.std()
        shifts = keep_pruned_at_zero(ps, [(eps[p.path] * std[p.path]).astype(p.leaf.dtype) for p in ps])
        return eqx.apply_updates(self.mean, unflatten_like_trainable(self.mean, shifts))

    def sample(self, key: PRNGKeyArray) -> PyTree:
        """A model drawn from q (same type as `mean`)."""
        return self.perturbed(self.noise(key))

    def predict(self, fn: Callable[[PyTree], Array], key: PRNGKeyArray, num_samples: int = 8) -> Array:
        """The posterior predictive `E_q[fn(model)]` averaged over `num_samples` sampled models.

        **Arguments:**

        - `fn`: maps a model to outputs, e.g. `lambda m: jax.nn.softmax(jax.vmap(m)(x))`.
        - `key`: a PRNG key.
        - `num_samples`: how many models to draw.

        **Returns:** the average of `fn` over the sampled models.
        """
        keys = jax.random.split(key, num_samples)
        return jax.lax.map(lambda k: fn(self.sample(k)), keys).mean(0)

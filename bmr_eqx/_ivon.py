"""IVON (Shen et al., 2024) as an optax transformation over a `Posterior`, and its noisy gradient."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from ._optim import mask_updates
from ._posterior import Posterior
from ._select import PyTree, is_none
from ._trainable import trainable


def noisy_value_and_grad(loss_fn: Callable[..., Array], *, mc_samples: int = 1) -> Callable[..., tuple[Array, Posterior]]:
    """The Monte-Carlo value-and-grad step of IVON (BMR.md §1).

    `noisy_value_and_grad(loss_fn)(posterior, key, *args)` draws `mc_samples` models
    `θ_s = m + σ·ε_s` (pruned weights: 0, no noise), evaluates `loss_fn(θ_s, *args)` (the mean
    per-example loss of a minibatch) and returns `(loss, grads)` where `grads` has the structure of
    the posterior: `grads.mean` = mean_s ∇ℓ(θ_s) and `grads.hess` = mean_s ∇ℓ(θ_s)·ε_s/σ (the
    reparameterisation curvature estimate). Pass them to `ivon().update(grads, state, posterior)`.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, *args) -> scalar`, the same function one would give to
      `eqx.filter_value_and_grad`.
    - `mc_samples`: the number S of sampled models per step (unrolled). With S = 1 the noise is
      `posterior.noise(key)`; otherwise `posterior.noise(k)` for `k in jax.random.split(key, S)`.
    """
    if not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}.")
    value_and_grad = eqx.filter_value_and_grad(loss_fn)

    def step(posterior: Posterior, key: PRNGKeyArray, *args: Any, **kwargs: Any) -> tuple[Array, Posterior]:
        if not isinstance(posterior, Posterior):
            raise TypeError(f"noisy_value_and_grad needs a bmr_eqx.Posterior, got {type(posterior).__name__}.")
        sigma = posterior.std()
        loss, g_sum, h_sum = 0.0, None, None
        keys = [key] if mc_samples == 1 else list(jax.random.split(key, mc_samples))
        for k in keys:
            eps = posterior.noise(k)
            value, g = value_and_grad(posterior.perturbed(eps), *args, **kwargs)
            g = eqx.filter(g, eqx.is_inexact_array)
            h = jax.tree.map(lambda gi, e, s: gi * e / s, g, eps, sigma)
            loss = loss + value
            g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
            h_sum = h if h_sum is None else jax.tree.map(jnp.add, h_sum, h)
        scale = 1.0 / mc_samples
        g_mean = jax.tree.map(lambda x: x * scale, g_sum)
        h_mean = jax.tree.map(lambda x: x * scale, h_sum)
        grads = eqx.tree_at(lambda p: (p.mean, p.hess), posterior, (g_mean, h_mean), is_leaf=is_none)
        return loss * scale, grads

    return step


class IVONState(NamedTuple):
    """`momentum`: the gradient momentum g (shaped like `trainable(posterior.mean)`); `count`: steps taken."""

    momentum: PyTree
    count: Int[Array, ""]


def ivon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.99999,
    clip_radius: float = math.inf,
    rescale_lr: bool = True,
    hess_update_every: int = 1,
) -> optax.GradientTransformation:
    """The IVON optimizer (Shen et al., "Variational Learning is Effective for Large Deep Networks",
    ICML 2024) as an optax `GradientTransformation` over a `Posterior` (BMR.md §1).

    Use it with `noisy_value_and_grad`: `init(posterior)`, then
    `updates, state = opt.update(grads, state, posterior)` and
    `posterior = eqx.apply_updates(posterior, updates)`, which moves the mean and the curvature
    `hess` together. The prior (`weight_decay` δ), `ess` and `hess_init` live on the `Posterior`.

    Per step: `g ← b1·g + (1−b1)·ĝ`; `h ← b2·h + (1−b2)·ĥ + ½(1−b2)²(h−ĥ)²/(h+δ)` (keeps h > 0);
    `m ← m − α·clip((g/(1−b1^t) + δ·m)/(h+δ), ±clip_radius)`.

    **Arguments:**

    - `learning_rate`: α, a float or an optax schedule of the step count.
    - `b1`, `b2`: momentum and curvature averaging (defaults 0.9 and 0.99999).
    - `clip_radius`: elementwise clipping of the preconditioned step (default: none).
    - `rescale_lr`: multiply α by `hess_init + δ` as the PyTorch reference does (default True, so
      the paper's learning rates apply unchanged); blrax does not (use `rescale_lr=False` to match).
    - `hess_update_every`: refresh the curvature only every k steps (default 1: every step).

    Pruned weights of a `Sparse` mean get updates that bring them to exactly 0 and keep them there.
    """
    if not 0 <= b1 < 1 or not 0 <= b2 < 1:
        raise ValueError(f"b1 and b2 must be in [0, 1), got b1={b1}, b2={b2}.")
    if not clip_radius > 0:
        raise ValueError(f"clip_radius must be > 0, got {clip_radius}.")
    if not isinstance(hess_update_every, int) or hess_update_every < 1:
        raise ValueError(f"hess_update_every must be an integer >= 1, got {hess_update_every!r}.")

    def check(params: Any) -> Posterior:
        if not isinstance(params, Posterior):
            raise TypeError(
                f"ivon updates a bmr_eqx.Posterior (pass the posterior as params), got {type(params).__name__}."
            )
        return params

    def init_fn(params: PyTree) -> IVONState:
        post = check(params)
        return IVONState(jax.tree.map(jnp.zeros_like, trainable(post.mean)), jnp.zeros((), jnp.int32))

    def update_fn(grads: PyTree, state: IVONState, params: PyTree = None) -> tuple[Posterior, IVONState]:
        post = check(params)
        if not isinstance(grads, Posterior):
            raise TypeError("ivon needs grads with the Posterior structure: use bmr_eqx.noisy_value_and_grad.")
        delta = post.weight_decay
        count = state.count + 1
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        alpha = lr * (post.hess_init + delta) if rescale_lr else lr
        refresh = state.count % hess_update_every == 0
        momentum = jax.tree.map(lambda g, gh: b1 * g + (1 - b1) * gh, state.momentum, grads.mean)

        def new_h(h, hh):
            h_next = b2 * h + (1 - b2) * hh + 0.5 * (1 - b2) ** 2 * (h - hh) ** 2 / (h + delta)
            return jnp.where(refresh, h_next, h)

        hess = jax.tree.map(new_h, post.hess, grads.hess)
        debias = 1 - b1 ** count.astype(jnp.float32)

        def mean_step(g, m, h):
            step = (g / debias + delta * m) / (h + delta)
            return -alpha * jnp.clip(step, -clip_radius, clip_radius)

        d_mean = jax.tree.map(mean_step, momentum, trainable(post.mean), hess)
        d_mean = mask_updates(d_mean, post.mean)
        d_hess = jax.tree.map(lambda a, b: a - b, hess, post.hess)
        updates = eqx.tree_at(lambda p: (p.mean, p.hess), post, (d_mean, d_hess), is_leaf=is_none)
        return updates, IVONState(momentum, count)

    return optax.GradientTransformation(init_fn, update_fn)

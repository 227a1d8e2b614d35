"""IVON (Shen et al., 2024) as an optax transformation over a `Posterior`, and its noisy gradient."""

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._posterior import Posterior
from ._tree import PyTree, flatten_like_trainable, keep_pruned_at_zero, trainable, trainable_params


def _check_posterior(x: Any, who: str) -> Posterior:
    if not isinstance(x, Posterior):
        raise TypeError(f"{who} needs a bmr_eqx.Posterior, got {type(x).__name__}: wrap the model as "
                        "`bmr_eqx.Posterior(model, ess=...)`.")
    return x


def noisy_value_and_grad(
    loss_fn: Callable[..., Any], *, mc_samples: int = 1, has_aux: bool = False
) -> Callable[..., tuple[Any, PyTree, dict[str, Array]]]:
    """The Monte-Carlo value-and-grad step of IVON (see the docs' IVON theory page).

    `noisy_value_and_grad(loss_fn)(posterior, key, *args)` draws `mc_samples` models
    `θ_s = m + σ·ε_s` (pruned weights: 0, no noise), evaluates `loss_fn(θ_s, *args)` (the mean
    per-example loss of a minibatch) and returns `(value, grads, hess_estimate)`:

    - `value`: the loss averaged over the samples (with `has_aux=True`: `(loss, aux)`, the `aux` of
      the first sample, e.g. a `BatchNorm` model's new `State`);
    - `grads`: `mean_s ∇ℓ(θ_s)`, shaped like `bmr_eqx.trainable(posterior)`: an ordinary gradient
      that any optax transformation may clip or scale;
    - `hess_estimate`: the reparameterisation curvature estimate `mean_s ∇ℓ(θ_s)·ε_s/σ`, keyed by
      path like `posterior.hess`. Pass it to `ivon` as an extra argument,
      `opt.update(grads, state, posterior, hess_estimate=hess_estimate)`, so that no transformation
      chained with `ivon` ever treats it as a gradient.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, *args) -> scalar` (or `(scalar, aux)` with `has_aux`), the same
      function one would give to `eqx.filter_value_and_grad`.
    - `mc_samples`: the number S of sampled models per step (unrolled). With S = 1 the noise is
      `posterior.noise(key)`; otherwise `posterior.noise(k)` for `k in jax.random.split(key, S)`.
    - `has_aux`: whether `loss_fn` returns `(loss, aux)`.

    **Returns:** a function `(posterior, key, *args, **kwargs) -> (value, grads, hess_estimate)`.
    """
    if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}.")
    value_and_grad = eqx.filter_value_and_grad(loss_fn, has_aux=has_aux)

    def step(posterior: Posterior, key: PRNGKeyArray, *args: Any, **kwargs: Any):
        _check_posterior(posterior, "noisy_value_and_grad")
        ps = trainable_params(posterior.mean)
        precision = posterior.precision()
        keys = [key] if mc_samples == 1 else list(jax.random.split(key, mc_samples))
        loss, aux, g_sum, h_sum = 0.0, None, None, None
        for i, k in enumerate(keys):
            sample = posterior.perturbed(posterior.noise(k))
            value, g = value_and_grad(sample, *args, **kwargs)
            if has_aux:
                value, a = value
                aux = a if i == 0 else aux
            g = flatten_like_trainable(posterior.mean, eqx.filter(g, eqx.is_inexact_array), "The gradient")
            # ĝ·ε/σ computed as ĝ·(θ − m)/σ² from the sampled weights θ, which the forward pass has in
            # memory anyway: reading ε again would make XLA recompute its inverse-erf transform in every
            # fusion that uses the estimate (3 more times per step). (θ − m) is the perturbation the
            # forward pass really saw (pruned weights: 0).
            thetas = [q.leaf for q in trainable_params(sample)]
            h = [None if gi is None else _curvature_estimate(gi, t, p, precision[p.path]) for p, gi, t in zip(ps, g, thetas)]
            loss = loss + value
            g_sum = g if g_sum is None else [a + b for a, b in zip(g_sum, g)]
            h_sum = h if h_sum is None else [a + b for a, b in zip(h_sum, h)]
        scale = 1.0 / mc_samples
        g_mean = [None if x is None else x * jnp.asarray(scale, x.dtype) for x in g_sum]
        hess_estimate = {p.path: x * jnp.asarray(scale, x.dtype) for p, x in zip(ps, h_sum) if x is not None}
        grads = jax.tree.structure(trainable(posterior)).unflatten(g_mean)
        loss = loss * scale
        return ((loss, aux) if has_aux else loss), grads, hess_estimate

    return step


def _curvature_estimate(grad: Array, theta: Array, p: Any, precision: Array) -> Array:
    """`grad·(θ − m)·precision` in the curvature's dtype, 0 on pruned weights."""
    dt = precision.dtype
    h = grad.astype(dt) * (theta.astype(dt) - p.leaf.astype(dt)) * precision
    return h if p.mask is None else jnp.where(p.mask, h, jnp.zeros((), dt))


class IVONState(NamedTuple):
    """`momentum`: the gradient momentum g (shaped like `trainable(posterior)`); `count`: steps taken."""

    momentum: PyTree
    count: Int[Array, ""]


def ivon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float | Float[Array, ""] = 0.9,
    b2: float | Float[Array, ""] = 0.99999,
    clip_radius: float | Float[Array, ""] = math.inf,
    rescale_lr: bool = True,
    hess_update_every: int | Int[Array, ""] = 1,
) -> optax.GradientTransformationExtraArgs:
    """The IVON optimizer (Shen et al., "Variational Learning is Effective for Large Deep Networks",
    ICML 2024) as an optax transformation over a `Posterior` (see the docs' IVON theory page).

    Use it with `noisy_value_and_grad`: `state = opt.init(posterior)`, then
    `updates, state = opt.update(grads, state, posterior, hess_estimate=hess_estimate)` and
    `posterior = eqx.apply_updates(posterior, updates)`, which moves the mean and the curvature
    `hess` together. The prior (`weight_decay` δ), `ess` and `hess_init` live on the `Posterior`.
    The curvature estimate arrives as the extra argument `hess_estimate`, never inside the
    gradient, so transformations chained before `ivon` (clipping, scaling) change only the
    gradient; `optax.chain` passes extra arguments to every member.

    Per step: `g ← b1·g + (1−b1)·ĝ`; `h ← b2·h + (1−b2)·ĥ + ½(1−b2)²(h−ĥ)²/(h+δ)` (keeps h > 0);
    `m ← m − α·clip((g/(1−b1^t) + δ·m)/(h+δ), ±clip_radius)`. Everything is computed in each
    weight's own dtype (a `bfloat16` mean stays `bfloat16`); the curvature is kept in float32 at
    least. `ivon` must come last in a chain: its updates carry the curvature's change, which a
    transformation after it (a scale, a clip) would change too.

    **Arguments:**

    - `learning_rate`: α, a float or an optax schedule of the step count.
    - `b1`, `b2`: momentum and curvature averaging (defaults 0.9 and 0.99999).
    - `clip_radius`: elementwise clipping of the preconditioned step (default: none).
    - `rescale_lr`: multiply α by `hess_init + δ` as the PyTorch reference does (default True, so
      the paper's learning rates apply unchanged); blrax does not (use `rescale_lr=False` to match).
    - `hess_update_every`: refresh the curvature only every k steps (default 1: every step).

    The numbers may also be scalar arrays, so `optax.inject_hyperparams(bmr_eqx.ivon)` works
    (they are checked only when they are Python numbers).

    **Returns:** an `optax.GradientTransformationExtraArgs`. Pruned weights of a `Sparse` mean get
    updates that bring them to exactly 0 and keep them there.
    """
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if number(b1) and number(b2) and not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"b1 and b2 must be in [0, 1), got b1={b1}, b2={b2}.")
    if number(clip_radius) and not clip_radius > 0:
        raise ValueError(f"clip_radius must be > 0, got {clip_radius}.")
    every = hess_update_every
    if isinstance(every, bool) or not (
        (isinstance(every, int) and every >= 1) or (isinstance(every, jax.Array) and jnp.issubdtype(every.dtype, jnp.integer))
    ):
        raise ValueError(f"hess_update_every must be an integer >= 1, got {hess_update_every!r}.")

    def init_fn(params: PyTree) -> IVONState:
        post = _check_posterior(params, "ivon.init")
        return IVONState(jax.tree.map(jnp.zeros_like, trainable(post)), jnp.zeros((), jnp.int32))

    def update_fn(
        grads: PyTree,
        state: IVONState,
        params: PyTree = None,
        *,
        hess_estimate: Mapping[str, Array] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, IVONState]:
        del extra_args
        post = _check_posterior(params, "ivon.update (pass the posterior as params)")
        if hess_estimate is None:
            raise TypeError(
                "ivon needs the curvature estimate: `opt.update(grads, state, posterior, hess_estimate=h)` with "
                "`value, grads, h = bmr_eqx.noisy_value_and_grad(loss_fn)(posterior, key, ...)`."
            )
        ps = trainable_params(post.mean)
        missing = sorted(set(post.hess) - set(hess_estimate))
        if missing:
            raise ValueError(f"hess_estimate has no entry for {missing[:5]}; pass the third output of "
                             "bmr_eqx.noisy_value_and_grad for this posterior.")
        g_hat = flatten_like_trainable(post, grads, "grads")
        g_old = flatten_like_trainable(post, state.momentum, "The IVON momentum")
        delta = post.weight_decay
        count = state.count + 1
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        alpha = lr * (post.hess_init + delta) if rescale_lr else lr
        # every step (the default): no select, which would make the mean's update read the old
        # curvature and XLA copy it before updating it in place
        refresh = True if isinstance(every, int) and every == 1 else state.count % hess_update_every == 0
        debias = 1 - b1 ** count.astype(jnp.float32)

        momentum, d_mean, d_hess = [], [], {}
        for p, gh, g in zip(ps, g_hat, g_old):
            dt = p.leaf.dtype
            h, hh = post.hess[p.path], hess_estimate[p.path].astype(post.hess[p.path].dtype)
            g = (b1 * g + (1 - b1) * gh).astype(g.dtype)
            # one division at the end: XLA then computes h_next once and stores it, instead of
            # recomputing ĥ (and reading the old mean) in the fusions that write the new mean and
            # curvature, which would make it copy both before updating them in place
            h_next = ((b2 * h + (1 - b2) * hh) * (h + delta) + 0.5 * (1 - b2) ** 2 * (h - hh) ** 2) / (h + delta)
            d_h = (h_next if refresh is True else jnp.where(refresh, h_next, h)).astype(h.dtype) - h
            h_new = h + d_h  # what eqx.apply_updates computes: XLA stores it once and the mean's update reads it
            step = ((g / debias.astype(dt) + delta * p.leaf) / (h_new + delta)).astype(dt)
            momentum.append(g)
            d_mean.append((-jnp.asarray(alpha, dt) * jnp.clip(step, -clip_radius, clip_radius)).astype(dt))
            d_hess[p.path] = d_h
        d_mean = keep_pruned_at_zero(ps, d_mean)
        mean_updates = jax.tree.structure(trainable(post.mean)).unflatten(d_mean)
        w = post.init_weight
        d_w = (w * b2 if refresh is True else jnp.where(refresh, w * b2, w)) - w  # hess_init's weight decays by b2
        updates = eqx.tree_at(
            lambda q: (q.mean, q.hess, q.init_weight), post, (mean_updates, d_hess, d_w), is_leaf=lambda x: x is None
        )
        new_momentum = jax.tree.structure(trainable(post)).unflatten(momentum)
        return updates, IVONState(new_momentum, count)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

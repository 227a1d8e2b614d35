"""Bayesian model reduction for mean-field Gaussian posteriors (see the docs' BMR theory page).

Sign convention: `ΔF = ln p̃(y) − ln p(y)` (reduced minus full). `ΔF > 0` means the reduced model
(the weight switched off, or shrunk) has more evidence: prune it.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma
from jaxtyping import Array, ArrayLike, Bool, Float

from ._posterior import Posterior, check_prior
from ._tree import trainable_params

Scalar = float | int | Float[ArrayLike, ""]


def _check_reduced(ess: float | int, weight_decay: float | int, reduced_precision: Any) -> None:
    check_prior(ess, weight_decay)
    if isinstance(reduced_precision, (int, float)) and reduced_precision < ess * weight_decay:
        raise ValueError(
            f"reduced_precision ({reduced_precision}) must be >= the prior precision ess·weight_decay "
            f"({ess * weight_decay}): a reduced prior is tighter than the full one."
        )


def delta_f_spike(
    mean: Float[ArrayLike, "*shape"], hess: Float[ArrayLike, "*shape"], ess: Scalar, weight_decay: Scalar
) -> Float[Array, "*shape"]:
    """ΔF of switching each weight off (a spike at 0 as the reduced prior):
    `½·log1p(h/δ) − ½·λ·(h + δ)·μ²`, a Savage–Dickey ratio. Elementwise; finite for `h = 0`.

    **Arguments:**

    - `mean`: the posterior mean μ.
    - `hess`: the posterior curvature h (IVON's, ≥ 0), shaped like `mean`.
    - `ess`: the effective sample size λ > 0 of the prior.
    - `weight_decay`: the prior precision per example δ > 0.

    **Returns:** ΔF of each weight, shaped like `mean` (`> 0`: the evidence favours pruning it).
    """
    check_prior(ess, weight_decay)
    mean, hess = jnp.asarray(mean), jnp.maximum(jnp.asarray(hess), 0)
    return 0.5 * jnp.log1p(hess / weight_decay) - 0.5 * ess * (hess + weight_decay) * mean**2


def delta_f_gaussian(
    mean: Float[ArrayLike, "*shape"],
    hess: Float[ArrayLike, "*shape"],
    ess: float | int,
    weight_decay: float | int,
    reduced_precision: Scalar,
) -> Float[Array, "*shape"]:
    """ΔF of shrinking each weight's prior to `N(0, 1/π_r)` (π_r ≥ the prior precision λδ):
    `½·ln(π·π_r/(π0·π̃)) − ½·π·μ² + ½·π̃·μ̃²` with `π = λ(h + δ)`, `π0 = λδ`, `π̃ = π + π_r − π0`.
    As π_r → ∞ it tends to `delta_f_spike` (use that for the spike itself).

    **Arguments:**

    - `mean`: the posterior mean μ.
    - `hess`: the posterior curvature h (IVON's, ≥ 0), shaped like `mean`.
    - `ess`: the effective sample size λ > 0 of the prior.
    - `weight_decay`: the prior precision per example δ > 0.
    - `reduced_precision`: the reduced prior's precision π_r, a scalar ≥ λδ.

    **Returns:** ΔF of each weight, shaped like `mean`.
    """
    _check_reduced(ess, weight_decay, reduced_precision)
    mean, hess = jnp.asarray(mean), jnp.maximum(jnp.asarray(hess), 0)
    prec = ess * (hess + weight_decay)
    prior = ess * weight_decay
    extra = reduced_precision - prior
    reduced = prec + extra
    # ln(π/π0) + ln(π_r/π̃), and −½πμ² + ½π̃μ̃² = −½·π·μ²·(π_r − π0)/π̃.
    log_ratio = jnp.log1p(hess / weight_decay) + jnp.log(reduced_precision / reduced)
    return 0.5 * log_ratio - 0.5 * prec * mean**2 * extra / reduced


def reduced_posterior(
    mean: Float[ArrayLike, "*shape"],
    hess: Float[ArrayLike, "*shape"],
    ess: float | int,
    weight_decay: float | int,
    reduced_precision: Scalar,
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """The posterior under the reduced prior `N(0, 1/π_r)`, in IVON terms:
    `h̃ = h + (π_r − λδ)/λ` and `μ̃ = μ·(h + δ)/(h̃ + δ)`.

    **Arguments:**

    - `mean`: the posterior mean μ.
    - `hess`: the posterior curvature h, shaped like `mean`.
    - `ess`: the effective sample size λ > 0 of the prior.
    - `weight_decay`: the prior precision per example δ > 0.
    - `reduced_precision`: the reduced prior's precision π_r, a scalar ≥ λδ.

    **Returns:** `(μ̃, h̃)`, the reduced posterior's mean and curvature, each shaped like `mean`.
    """
    _check_reduced(ess, weight_decay, reduced_precision)
    mean, hess = jnp.asarray(mean), jnp.asarray(hess)
    new_hess = hess + (reduced_precision - ess * weight_decay) / ess
    return mean * (hess + weight_decay) / (new_hess + weight_decay), new_hess


def group_delta_f(
    delta_f: Float[ArrayLike, "*shape"], axis: int = 0, bias_delta_f: Float[ArrayLike, " group"] | None = None
) -> Float[Array, " group"]:
    """ΔF of removing whole groups (neurons, channels, filters): the sum of the members' ΔF along
    every axis but `axis` (mean-field posteriors make group ΔF additive), plus the bias's ΔF of each
    group if given. For an `eqx.nn.Linear` weight (out, in), `axis=0` gives one ΔF per output neuron.

    **Arguments:**

    - `delta_f`: the elementwise ΔF of a weight (e.g. from `delta_f_spike`).
    - `axis`: the group axis (default 0); every other axis is summed over.
    - `bias_delta_f`: optional ΔF of the bias, one entry per group, added to each group's sum.

    **Returns:** a 1-D array with one ΔF per group (the length of `delta_f` along `axis`).
    """
    delta_f = jnp.asarray(delta_f)
    axis = axis % delta_f.ndim
    total = jnp.sum(delta_f, axis=tuple(a for a in range(delta_f.ndim) if a != axis))
    if bias_delta_f is not None:
        total = total + jnp.asarray(bias_delta_f).reshape(total.shape)
    return total


def spike_and_slab_threshold(delta_f: Float[ArrayLike, "*shape"], num_iters: int = 20) -> Float[Array, ""]:
    """The evidence threshold ζ of a spike-and-slab prior with a fitted inclusion rate (see the docs' BMR theory page,
    after Marković et al.): from ζ = 0 repeat `q = sigmoid(ζ − ΔF)`, `α = 1 + Σq`,
    `β = 1 + Σ(1 − q)`, `ζ = ψ(α) − ψ(β)`. Keep a weight iff `ΔF ≤ ζ`.

    **Arguments:**

    - `delta_f`: the ΔF of every weight (or group) of one leaf, any shape.
    - `num_iters`: fixed-point iterations (default 20).

    **Returns:** the scalar threshold ζ.
    """
    delta_f = jnp.asarray(delta_f)

    def body(_: Any, zeta: Array) -> Array:
        q = jax.nn.sigmoid(zeta - delta_f)
        a = 1.0 + jnp.sum(q)
        b = 1.0 + jnp.sum(1.0 - q)
        return digamma(a) - digamma(b)

    return jax.lax.fori_loop(0, num_iters, body, jnp.zeros((), delta_f.dtype))


def spike_and_slab_mask(delta_f: Float[ArrayLike, "*shape"], num_iters: int = 20) -> Bool[Array, "*shape"]:
    """Keep mask of the spike-and-slab fixed point: `ΔF ≤ spike_and_slab_threshold(ΔF)`.

    **Arguments:**

    - `delta_f`: the ΔF of every weight (or group) of one leaf, any shape.
    - `num_iters`: fixed-point iterations (default 20).

    **Returns:** a bool array shaped like `delta_f`, `True` where kept.
    """
    delta_f = jnp.asarray(delta_f)
    return delta_f <= spike_and_slab_threshold(delta_f, num_iters)


def posterior_delta_f(posterior: Posterior, curvature: str = "posterior") -> dict[str, Array]:
    """Spike ΔF of every trainable weight of `posterior`, keyed by path like `posterior.hess`, at the
    posterior's curvature (`curvature="posterior"`, as the BMR pruners score by default) or at the
    data curvature `posterior.data_hess()` (`"data"`).

    **Arguments:**

    - `posterior`: a `Posterior`.
    - `curvature`: `"posterior"` or `"data"`.

    **Returns:** a dict from path to an array of ΔF, shaped like the weight.
    """
    if curvature not in ("posterior", "data"):
        raise ValueError(f"curvature must be 'posterior' or 'data', got {curvature!r}.")
    hess = posterior.hess if curvature == "posterior" else posterior.data_hess()
    return {
        p.path: delta_f_spike(p.leaf, hess[p.path], posterior.ess, posterior.weight_decay)
        for p in trainable_params(posterior.mean)
    }


def full_covariance_reduction(
    weight: Float[ArrayLike, "rows inputs"],
    precision: Float[ArrayLike, "inputs inputs"],
    prior_precision: Scalar,
    *,
    sparsity: float | None = None,
    threshold: Scalar = 0.0,
) -> tuple[Float[Array, "rows inputs"], Bool[Array, "rows inputs"], Float[Array, " rows"]]:
    """Bayesian model reduction of a layer with a full-covariance Gaussian posterior per row: the
    Optimal Brain Surgeon update with the evidence as its stopping rule.

    Each row `w` of the weight has posterior `N(w, P⁻¹)` (one precision `P` for every row, e.g.
    `XᵀX/σ² + πI` for a linear layer with inputs `X`, output noise `σ²` and prior `N(0, 1/π)`).
    Switching off a set `S` of a row's weights (a spike at 0) changes the log evidence by
    `ΔF(S) = −½·log|Σ_SS| − ½·w_Sᵀ Σ_SS⁻¹ w_S − ½·|S|·log π` (`Σ = P⁻¹`, Savage–Dickey), and moves
    the kept weights to `w_R − Σ_RS Σ_SS⁻¹ w_S`: the OBS update. Weights are switched off one at a
    time, each time the one whose removal adds most to ΔF given those already off (the chain rule
    makes the sum exact); a row stops when the next one would add `≤ threshold` nats (the evidence
    decides each row's, hence the layer's, sparsity), or, with `sparsity`, after exactly
    `round(sparsity · inputs)` weights. Costs O(inputs²) memory per row and O(inputs³) time.

    **Arguments:**

    - `weight`: the posterior mean, `(rows, inputs)` (an `eqx.nn.Linear` weight).
    - `precision`: `P`, `(inputs, inputs)`, symmetric positive definite.
    - `prior_precision`: π > 0, the precision of each weight's prior `N(0, 1/π)`.
    - `sparsity`: a fixed fraction of every row to switch off (None: let the evidence decide).
    - `threshold`: with `sparsity=None`, the least ΔF gain (nats) that switches a weight off.

    **Returns:** `(new_weight, mask, delta_f)`: the reduced posterior mean (pruned entries 0), the
    mask of kept weights, and each row's total ΔF, computed and returned in float32.
    """
    weight = jnp.asarray(weight, jnp.float32)
    rows, d = weight.shape
    precision = jnp.asarray(precision, jnp.float32)
    if precision.shape != (d, d):
        raise ValueError(f"precision must be ({d}, {d}) for a weight of shape {weight.shape}, got {precision.shape}.")
    if isinstance(prior_precision, (int, float)) and not prior_precision > 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision!r}.")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}.")
    cov = jnp.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    log_prior = jnp.log(jnp.asarray(prior_precision, jnp.float32))
    steps = d if sparsity is None else int(round(sparsity * d))

    def one_row(w: Array) -> tuple[Array, Array, Array]:
        def step(_: Any, carry: tuple) -> tuple:
            w, cov, off, total, done = carry
            var = jnp.maximum(jnp.diag(cov), 1e-30)
            gain = -0.5 * jnp.log(var) - 0.5 * w**2 / var - 0.5 * log_prior
            gain = jnp.where(off, -jnp.inf, gain)
            q = jnp.argmax(gain)
            go = ~done & ((gain[q] > threshold) if sparsity is None else True)
            col = cov[:, q]
            new_w = (w - col * w[q] / var[q]).at[q].set(0.0)
            new_cov = cov - jnp.outer(col, col) / var[q]
            new_cov = new_cov.at[q, :].set(0.0).at[:, q].set(0.0).at[q, q].set(1.0)  # q is fixed at 0
            return (jnp.where(go, new_w, w), jnp.where(go, new_cov, cov), off.at[q].set(off[q] | go),
                    total + jnp.where(go, gain[q], 0.0), done | ~go)

        init = (w, cov, jnp.zeros(d, bool), jnp.zeros((), jnp.float32), jnp.zeros((), bool))
        w, _, off, total, _ = jax.lax.fori_loop(0, steps, step, init)
        return w, ~off, total

    return jax.jit(jax.vmap(one_row))(weight)

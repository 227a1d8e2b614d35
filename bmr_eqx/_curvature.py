"""Informative curvature for Bayesian model reduction: a post-hoc refresh from data, and a
diagnostic that says when the evidence cannot tell weights apart beyond their magnitude."""

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ._posterior import Posterior
from ._sites import find_sites
from ._sparse import Sparse
from ._tree import PyTree, flatten_like_trainable, trainable_params

METHODS = ("hessian", "fisher")


def _as_args(batch: Any) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


@eqx.filter_jit
def _batch_curvature(mean: PyTree, args: tuple, key: PRNGKeyArray, loss_fn: Callable, method: str, num_probes: int):
    if method == "fisher":
        def one(*example):
            g = eqx.filter_grad(loss_fn)(mean, *[e[None] for e in example])
            return [x ** 2 for x in flatten_like_trainable(mean, g, "The gradient")]

        squares = jax.vmap(one)(*args)
        return [s.mean(0) for s in squares]
    params, static = eqx.partition(mean, eqx.is_inexact_array)

    def loss(p):
        return loss_fn(eqx.combine(p, static), *args)

    leaves, treedef = jax.tree.flatten(params)

    def probe(total, k):  # one Hessian-vector product with a Rademacher probe z: adds z ⊙ Hz
        keys = jax.random.split(k, len(leaves))
        z = [jax.random.rademacher(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)]
        _, hz = jax.jvp(jax.grad(loss), (params,), (treedef.unflatten(z),))
        return [t + zi * hi for t, zi, hi in zip(total, z, jax.tree.leaves(hz))], None

    total, _ = jax.lax.scan(probe, [jnp.zeros_like(x) for x in leaves], jax.random.split(key, num_probes))
    by_leaf = treedef.unflatten([t / num_probes for t in total])
    return flatten_like_trainable(mean, by_leaf, "The curvature")


def refresh_curvature(
    posterior: Posterior,
    loss_fn: Callable[..., Array],
    batches: Iterable[Any],
    *,
    method: str = "hessian",
    num_probes: int = 8,
    key: PRNGKeyArray | None = None,
    progress: bool = False,
) -> Posterior:
    """The posterior with its curvature computed from data at the posterior mean.

    IVON's curvature is a slow average that starts at `hess_init`; before pruning, this replaces it
    by the diagonal curvature of the mean training loss at the mean, averaged over `batches` (each
    batch weighted by its size), clipped at 0, with `init_weight` 0. Two estimators:

    - `"hessian"` (default): Hutchinson's estimate `E_z[z ⊙ H z]` of the diagonal of the Hessian,
      with `num_probes` Rademacher probes per batch (one Hessian-vector product each). It is exact
      where the Hessian is diagonal and unbiased otherwise; for a linear-Gaussian model it is the
      Gauss-Newton matrix `XᵀX/(Nσ²)`.
    - `"fisher"`: the empirical Fisher `mean_i (∇ℓ_i)²` from per-example gradients (the leading
      axis of every batch array is the example axis).

    Pruned weights get curvature 0 (their gradient is 0). Use `eqx.nn.inference_mode` on models
    whose loss depends on batch statistics.

    **Arguments:**

    - `posterior`: a `Posterior`.
    - `loss_fn`: `loss_fn(model, *batch) -> scalar`, the mean per-example loss (as for training).
    - `batches`: an iterable of batches (a tuple of arrays, or one array).
    - `method`: `"hessian"` or `"fisher"`.
    - `num_probes`: Hutchinson probes per batch.
    - `key`: PRNG key for the probes (default `jax.random.key(0)`).
    - `progress`: show a progress bar (needs tqdm).

    **Returns:** the `Posterior` with the new curvature (`init_weight` 0).
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(f"refresh_curvature needs a bmr_eqx.Posterior, got {type(posterior).__name__}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}.")
    key = jax.random.key(0) if key is None else key
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="curvature", leave=False)
    ps = trainable_params(posterior.mean)
    total, count = None, 0
    for i, batch in enumerate(batches):
        args = _as_args(batch)
        n = int(jnp.shape(args[0])[0]) if jnp.ndim(args[0]) else 1
        est = _batch_curvature(posterior.mean, args, jax.random.fold_in(key, i), loss_fn, method, num_probes)
        est = [e * n for e in est]
        total = est if total is None else [t + e for t, e in zip(total, est)]
        count += n
    if total is None:
        raise ValueError("batches is empty: pass at least one batch of data.")
    hess = {p.path: jnp.maximum(t / count, 0).astype(posterior.hess[p.path].dtype) for p, t in zip(ps, total)}
    return Posterior(
        posterior.mean, ess=posterior.ess, weight_decay=posterior.weight_decay, hess_init=posterior.hess_init,
        hess=hess, init_weight=0.0,
    )


def curvature_report(posterior: Posterior, paths: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Per leaf, how much the posterior's curvature can tell weights apart.

    - `"init_fraction"`: the share of `hess` (on average) that is still the initial value
      `hess_init` (1: IVON has learnt nothing yet);
    - `"spread"`: the relative spread of the data curvature, `(p95 − p5)/|median|` (0: every weight
      has the same curvature, so ΔF is a function of |μ| alone and BMR ranks like magnitude);
    - `"rank_corr_magnitude"`: Spearman's rank correlation of −ΔF with |μ| (near 1: BMR and magnitude
      pruning keep the same weights).

    **Arguments:**

    - `posterior`: a `Posterior`.
    - `paths`: the leaves to report (default: every trainable leaf with `ndim >= 2`).

    **Returns:** a dict from path to a dict of the three figures (Python floats).
    """
    from ._bmr import delta_f_spike

    data = posterior.data_hess()
    means = {p.path: p.leaf for p in trainable_params(posterior.mean)}
    w = float(posterior.init_weight)
    paths = [p for p in means if means[p].ndim >= 2] if paths is None else list(paths)
    out = {}
    for path in paths:
        h = np.asarray(posterior.hess[path], np.float64)
        d = np.asarray(data[path], np.float64).ravel()
        mu = np.asarray(means[path], np.float64).ravel()
        p5, p50, p95 = np.percentile(d, [5, 50, 95])
        df = np.asarray(delta_f_spike(means[path], data[path], posterior.ess, posterior.weight_decay), np.float64).ravel()
        out[path] = {
            "init_fraction": float(np.mean(w * posterior.hess_init / np.maximum(h, 1e-30))) if w > 0 else 0.0,
            "spread": float((p95 - p5) / max(abs(p50), 1e-30)),
            "rank_corr_magnitude": _spearman(-df, np.abs(mu)),
        }
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


BLIND_SPREAD = 0.05


def warn_if_blind(posteriors: Iterable[tuple[Posterior, list[str]]], curvature: str = "posterior") -> None:
    """Warn when the curvature (`"posterior"` or `"data"`) of the leaves to prune is (nearly) the
    same for every weight."""
    blind = []
    for post, paths in posteriors:
        data = post.hess if curvature == "posterior" else post.data_hess()
        for path in paths:
            d = np.asarray(data[path], np.float64).ravel()
            p5, p50, p95 = np.percentile(d, [5, 50, 95])
            if (p95 - p5) <= BLIND_SPREAD * max(abs(p50), 1e-30):
                blind.append(path)
    if blind:
        warnings.warn(
            f"The posterior's curvature is (nearly) the same for every weight of {blind[:4]}"
            f"{' and more' if len(blind) > 4 else ''}, so ΔF is a function of |μ| alone and BMR ranks like magnitude "
            "pruning. Refresh it from data (bmr_eqx.refresh_curvature), train longer, lower ivon's b2 or the "
            "Posterior's hess_init; bmr_eqx.curvature_report shows the figures.",
            stacklevel=3,
        )


def laplace_posterior(
    model: PyTree,
    loss_fn: Callable[..., Array],
    batches: Iterable[Any],
    *,
    weight_decay: float,
    ess: float | None = None,
    method: str = "hessian",
    num_probes: int = 8,
    key: PRNGKeyArray | None = None,
    progress: bool = False,
) -> Posterior:
    """A Laplace posterior of a trained model, so every BMR pruner works on models never trained
    with IVON.

    The posterior is centred on the trained weights, with the curvature of the training loss there
    (`refresh_curvature` over `batches`: Hutchinson's Hessian diagonal, the Gauss–Newton matrix for
    a linear-Gaussian model, or the empirical Fisher) and the Gaussian prior that `weight_decay`
    stands for: `q(θ) = N(θ*, 1/(N·(h + δ)))` with `h` the mean per-example curvature over the
    calibration data, `N` the number of examples the model was trained on and `δ` the weight decay
    (an L2 penalty `δ/2·‖θ‖²` on the mean per-example loss).

    **Arguments:**

    - `model`: the trained model, plain (wrapped in `Sparse(model)`, default prunable leaves) or a
      `Sparse` one (its masks are kept).
    - `loss_fn`: `loss_fn(model, *batch) -> scalar`, the mean per-example training loss.
    - `batches`: an iterable of batches (the leading axis of a batch's first array counts examples).
    - `weight_decay`: δ > 0, the prior precision per example.
    - `ess`: `N`, the number of training examples (of the unit `loss_fn` averages over: sequences
      if it is a mean over sequences). The default, the number of calibration examples, is right
      only when the calibration data is the training data: a posterior from 128 calibration
      examples of a model trained on 30,000 is 200 times too wide, and its ΔF mostly Occam terms.
    - `method`, `num_probes`, `key`, `progress`: as for `refresh_curvature`.

    **Returns:** a `Posterior(Sparse(model), ess=N, weight_decay=δ)` with the data curvature
    (`init_weight` 0). Note the empirical Fisher (`method="fisher"`) of a loss averaged over long
    sequences is far smaller than the Hessian's diagonal (the per-token gradients average out), so
    the data may then barely move the posterior away from the prior.
    """
    if isinstance(model, Posterior):
        raise TypeError("laplace_posterior builds a Posterior from a trained model; pass the model (its `.mean`).")
    if not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0 (it is the prior precision), got {weight_decay!r}.")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one batch of calibration data.")
    n = sum(int(jnp.shape(_as_args(b)[0])[0]) if jnp.ndim(_as_args(b)[0]) else 1 for b in batches)
    sparse = model if find_sites(model) else Sparse(model)
    if ess is not None and not ess > 0:
        raise ValueError(f"ess must be > 0 (the number of training examples), got {ess!r}.")
    post = Posterior(sparse, ess=n if ess is None else ess, weight_decay=weight_decay)
    return refresh_curvature(post, loss_fn, batches, method=method, num_probes=num_probes, key=key, progress=progress)

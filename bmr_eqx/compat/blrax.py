"""blrax's IVON interface (`import bmr_eqx.compat.blrax as blrax`): the curvature lives in the
optimizer state, the parameters are a plain pytree. `ivon`, `noisy_value_and_grad`, `get_scale`
and `sample_posterior` delegate to `bmr_eqx.ivon`, `bmr_eqx.noisy_value_and_grad` and
`bmr_eqx.Posterior` over a posterior assembled from that state.
"""

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import _ivon
from .._posterior import Posterior, check_prior, hess_dtype
from .._sparse import Sparse
from .._tree import path_str, trainable
from ._tree import is_none


class _Constant(float):
    """A float that pytrees treat as structure, not as a leaf: `ess` and `weight_decay` stay
    Python numbers under `jax.jit` (the core posterior needs them concrete)."""

    def __repr__(self) -> str:
        return float.__repr__(self)


jax.tree_util.register_pytree_node(_Constant, lambda c: ((), float(c)), lambda aux, _: _Constant(aux))


class ScaleByIvonState(NamedTuple):
    """blrax's IVON state: `count`, gradient `momentum` and curvature `hess` (shaped like the
    parameters), the prior's `ess` and `weight_decay`, the refresh period `hess_every`, the latest
    curvature estimate `h_bar` (written by `noisy_value_and_grad`) and `init_weight`, the weight the
    initial curvature still has in `hess`."""

    count: Any
    momentum: Any
    hess: Any
    ess: Any
    weight_decay: Any
    hess_every: Any = 1
    h_bar: Any = None
    init_weight: Any = 1.0


def _ivon_state(opt_state: Any) -> Any:
    state = opt_state[0] if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields") else opt_state
    return state if all(hasattr(state, f) for f in ("hess", "ess", "weight_decay")) else None


def _concrete(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise ValueError(
            f"IVON's {name} is traced, but the posterior needs it as a number: keep it a Python number (with "
            f"optax.inject_hyperparams, list it in static_args; bmr_eqx.compat.ivon's state keeps it concrete)."
        ) from None


def _by_path(params: Any, tree: Any) -> dict[str, Any]:
    """`{core path: leaf of tree}` for the floating leaves of `params` (tree shaped like params)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_none)
    other = treedef.flatten_up_to(tree)
    return {path_str(kp): o for (kp, p), o in zip(flat, other) if eqx.is_inexact_array(p)}


def _like_params(params: Any, by_path: dict[str, Any]) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_none)
    return treedef.unflatten([by_path.get(path_str(kp)) for kp, _ in flat])


def _posterior(params: Any, state: Any, hess_init: float, mask: Any = None) -> Posterior:
    model = params
    if mask is not None:
        leaves = _by_path(params, params)
        masks = {k: _unpacked(m, leaves[k]).astype(bool) for k, m in _by_path(params, mask).items() if m is not None}
        model = Sparse(params, masks=masks)
    return Posterior(
        model,
        ess=_concrete(state.ess, "ess"),
        weight_decay=_concrete(state.weight_decay, "weight_decay"),
        hess_init=hess_init,
        hess=_by_path(params, state.hess),
        init_weight=getattr(state, "init_weight", 0.0),
    )


def _unpacked(mask: Any, leaf: Any) -> Any:
    """A mask as a leaf-shaped array; masks packed with `jnp.packbits` (`use_packed_masks`) are unpacked."""
    if mask.shape != leaf.shape and mask.dtype == jnp.uint8 and mask.size == -(-leaf.size // 8):
        return jnp.unpackbits(mask.reshape(-1))[: leaf.size].reshape(leaf.shape)
    return mask


def _on_posterior(post: Posterior, params_shaped: Any) -> Any:
    """A tree shaped like `trainable(post)` holding `params_shaped` as the mean's part."""
    return eqx.tree_at(lambda q: q.mean, trainable(post), params_shaped, is_leaf=is_none)


def ivon(
    learning_rate=None,
    ess=1.0,
    hess_init=1.0,
    clip_radius=math.inf,
    b1=0.9,
    b2=0.99999,
    weight_decay=1e-4,
    hess_every=1,
    rescale_lr=False,
    m_dtype=None,
    *,
    lr=None,
):
    """blrax's `ivon` over a plain parameter pytree (`lr=` is an alias of `learning_rate`).

    The state is a 1-tuple holding a `ScaleByIvonState`; get the curvature estimate into it with
    `noisy_value_and_grad` before each `update` (without one the curvature stays as it is). The
    arithmetic is `bmr_eqx.ivon`'s. The arguments are in blrax's order; as there, `rescale_lr`
    defaults to False, and `m_dtype` sets the momentum's dtype. The prior needs `weight_decay > 0`.
    Under `optax.inject_hyperparams`, `ess`, `weight_decay` and `hess_init` must be `static_args`.
    """
    if (learning_rate is None) == (lr is None):
        raise TypeError("ivon needs exactly one of learning_rate= and lr=.")
    learning_rate = lr if learning_rate is None else learning_rate
    # optax.inject_hyperparams hands numbers over as arrays; the prior must stay concrete.
    ess, weight_decay, hess_init = (_concrete(v, n) for v, n in
                                    ((ess, "ess"), (weight_decay, "weight_decay"), (hess_init, "hess_init")))
    if isinstance(hess_every, jax.Array) and not isinstance(hess_every, jax.core.Tracer):
        hess_every = int(hess_every)
    core = _ivon.ivon(learning_rate, b1=b1, b2=b2, clip_radius=clip_radius, rescale_lr=rescale_lr,
                      hess_update_every=hess_every)
    ess_, wd_ = _Constant(ess), _Constant(weight_decay)
    check_prior(ess, weight_decay)

    def momentum_dtype(tree):
        return tree if m_dtype is None else jax.tree.map(lambda m: m.astype(m_dtype), tree)

    def init_fn(params):
        hess = jax.tree.map(lambda p: jnp.full(jnp.shape(p), hess_init, hess_dtype(jnp.result_type(p))), params)
        state = ScaleByIvonState(
            count=jnp.zeros([], jnp.int32),
            momentum=momentum_dtype(jax.tree.map(jnp.zeros_like, params)),
            hess=hess,
            ess=ess_,
            weight_decay=wd_,
            hess_every=hess_every,
            h_bar=hess,
            init_weight=jnp.ones([], jnp.float32),
        )
        return (state,)

    def update_fn(updates, opt_state, params=None):
        if params is None:
            raise ValueError("ivon.update needs params (the posterior mean).")
        state = opt_state[0]
        post = _posterior(params, state._replace(ess=ess_, weight_decay=wd_), hess_init)
        core_state = _ivon.IVONState(_on_posterior(post, state.momentum), state.count)
        out, new = core.update(
            _on_posterior(post, updates), core_state, post, hess_estimate=_by_path(params, state.h_bar)
        )
        hess = _like_params(params, {k: post.hess[k] + out.hess[k] for k in post.hess})
        new_state = state._replace(
            count=new.count,
            momentum=momentum_dtype(new.momentum.mean),
            hess=hess,
            h_bar=hess,
            init_weight=state.init_weight + out.init_weight,
        )
        return out.mean, (new_state,) + tuple(opt_state[1:])

    return optax.GradientTransformation(init_fn, update_fn)


def noisy_value_and_grad(loss_fn, opt_state, params, key, *args, mc_samples=1, mask=None, **kwargs):
    """blrax's Monte-Carlo loss and gradient under the IVON posterior in `opt_state[0]`:
    `loss_fn(params, *args, key)` is evaluated at `mc_samples` sampled parameters (masked entries
    at 0 when `mask` is given), and the curvature estimate is stored in the state's `h_bar`.

    `method` (`"sequential"` or `"parallel"`) is accepted for blrax's sake; both give the same
    estimate. Only blrax's default `estimator="sampling"` is provided.

    **Returns:** `(loss, grads, opt_state)`: the mean loss over the samples (with
    `has_aux=True`: `(loss, aux)`, the aux of the first sample), the mean gradient shaped like
    `params`, the updated state.
    Without an IVON state it is `jax.value_and_grad(loss_fn)(params, *args, key)`.
    """
    has_aux = kwargs.pop("has_aux", False)
    method = kwargs.pop("method", "sequential")
    estimator = kwargs.pop("estimator", "sampling")
    if method not in ("sequential", "parallel"):
        raise ValueError(f"method must be 'sequential' or 'parallel', got {method!r}.")
    if estimator != "sampling":
        raise NotImplementedError(
            f"estimator={estimator!r} is not provided; bmr_eqx's IVON uses the sampling (reparameterisation) "
            "estimator. For a curvature from data, see bmr_eqx.refresh_curvature."
        )
    if kwargs:
        raise TypeError(f"noisy_value_and_grad got unexpected keyword arguments {sorted(kwargs)}.")
    state = _ivon_state(opt_state)
    if state is None:
        value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, *args, key)
        return value, grads, opt_state
    post = _posterior(params, state, 1.0, mask)
    noise_key, loss_key = jax.random.split(key)

    def core_loss(model, *a):
        return loss_fn(model.masked() if isinstance(model, Sparse) else model, *a)

    step = _ivon.noisy_value_and_grad(core_loss, mc_samples=mc_samples, has_aux=has_aux)
    value, grads, h_hat = step(post, noise_key, *args, loss_key)
    grads = grads.mean.model if isinstance(grads.mean, Sparse) else grads.mean
    state = state._replace(h_bar=_like_params(params, h_hat))
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        return value, grads, (state,) + tuple(opt_state[1:])
    return value, grads, state


def get_scale(state):
    """The posterior standard deviation `1/sqrt(ess·(hess + weight_decay))` of every parameter,
    shaped like `state.hess` (`state`: an IVON state, e.g. `opt_state[0]`)."""
    post = Posterior(state.hess, ess=_concrete(state.ess, "ess"), weight_decay=_concrete(state.weight_decay, "weight_decay"),
                     hess=_by_path(state.hess, state.hess))
    return _like_params(state.hess, post.std())


def sample_posterior(key, params, state, shape=(), mask=None):
    """`(samples, noise)`: parameters drawn from the IVON posterior in `state` (masked entries at 0)
    and their offsets from `params`; `shape` adds leading sample axes."""
    post = _posterior(params, state, 1.0, mask)

    def draw(k):
        sample = post.perturbed(post.noise(k))
        sample = sample.model if isinstance(sample, Sparse) else sample
        return sample, jax.tree.map(lambda a, b: a - b, sample, params)

    if not shape:
        return draw(key)
    n = math.prod(shape)
    samples, noise = jax.vmap(draw)(jax.random.split(key, n))
    return jax.tree.map(lambda a: a.reshape(tuple(shape) + a.shape[1:]), (samples, noise))

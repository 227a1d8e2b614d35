"""The compatibility layer on the models Equinox users write: an MLP, a CNN with BatchNorm and
State, a small transformer; the trainable part goes through JaxPruner-style updaters and blrax IVON."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import MODELS, build, loss_for

import bmr_eqx.compat as jaxpruner
import bmr_eqx.compat.blrax as blrax

CONFIGS = {
    "magnitude": {"algorithm": "magnitude", "dist_type": "erk", "sparsity": 0.8, "update_freq": 2,
                  "update_start_step": 0, "update_end_step": 6},
    "rigl": {"algorithm": "rigl", "dist_type": "uniform", "sparsity": 0.8, "update_freq": 3,
             "update_start_step": 3, "update_end_step": 9, "drop_fraction": 0.3},
}


def _pairs(params, masks):
    """(param, mask) for every array of `params` that has a mask."""
    treedef = jax.tree.structure(params, is_leaf=lambda x: x is None)
    return [(p, m) for p, m in zip(treedef.flatten_up_to(params), treedef.flatten_up_to(masks))
            if p is not None and m is not None]


def _prunable(params, masks):
    """(kept, total) over the leaves that have a mask."""
    pairs = _pairs(params, masks)
    return sum(int((m != 0).sum()) for _, m in pairs), sum(m.size for _, m in pairs)


@pytest.mark.parametrize("name,algorithm", [
    ("mlp", "rigl"), ("cnn", "magnitude"), pytest.param("transformer", "magnitude", marks=pytest.mark.slow),
    pytest.param("cnn", "rigl", marks=pytest.mark.slow), pytest.param("transformer", "rigl", marks=pytest.mark.slow),
])
def test_updaters_train_equinox_models(name, algorithm):
    model, state = build(name)
    x, y = MODELS[name][1]()
    loss = loss_for(name)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    updater = jaxpruner.create_updater_from_config(CONFIGS[algorithm])
    tx = updater.wrap_optax(optax.adam(1e-2))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, state, key):
        def f(p):
            return loss(eqx.combine(p, static), state, x, y, key)

        (value, state), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = updater.post_gradient_update(optax.apply_updates(params, updates), opt_state)
        return params, opt_state, state, value

    masks_before = None
    for i in range(12):
        if i == 3:
            masks_before = opt_state.masks
        params, opt_state, state, value = step(params, opt_state, state, jax.random.key(i))
        assert np.isfinite(float(value))
        # Masked weights are exactly 0 after every step.
        assert all(not bool(jnp.any(p[m == 0] != 0)) for p, m in _pairs(params, opt_state.masks))
    kept, total = _prunable(params, opt_state.masks)
    assert total > 0 and kept / total == pytest.approx(0.2, abs=0.02)
    if algorithm == "rigl":  # the masks moved, at constant sparsity
        changed = sum(int((a != b).sum()) for a, b in zip(jax.tree.leaves(masks_before), jax.tree.leaves(opt_state.masks)))
        assert changed > 0
    # Every array the model had is still there, with its shape: the model rebuilds and runs.
    rebuilt = eqx.combine(params, static)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(model)


def test_bmr_with_blrax_ivon_on_a_batchnorm_cnn():
    """BMRPruner's flow on the CNN: IVON through blrax's interface with the BatchNorm state as aux."""
    model, state = build("cnn")
    x, y = MODELS["cnn"][1]()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    updater = jaxpruner.create_updater_from_config(
        {"algorithm": "bmr", "dist_type": "uniform", "sparsity": 0.7, "update_freq": 2, "update_start_step": 2,
         "update_end_step": 6}
    )
    optimizer = updater.wrap_optax(blrax.ivon(lr=0.05, ess=16, hess_init=1.0, rescale_lr=True))
    optstate = optimizer.init(params)

    def loss_fn(p, state, key):
        return loss_for("cnn")(eqx.combine(p, static), state, x, y, key)

    @jax.jit
    def step(params, optstate, state, key):
        (value, state), grads, inner = blrax.noisy_value_and_grad(
            loss_fn, optstate.inner_state, params, key, state, mask=optstate.masks, has_aux=True
        )
        optstate = optstate._replace(inner_state=inner)
        updates, optstate = optimizer.update(grads, optstate, params)
        return updater.post_gradient_update(optax.apply_updates(params, updates), optstate), optstate, state, value

    hess0 = optstate.inner_state[0].hess
    for i in range(8):
        params, optstate, state, value = step(params, optstate, state, jax.random.key(i))
        assert np.isfinite(float(value))
    kept, total = _prunable(params, optstate.masks)
    assert kept / total == pytest.approx(0.3, abs=0.02)
    # The curvature learnt something, and stays positive.
    hess = optstate.inner_state[0].hess
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(hess), jax.tree.leaves(hess0))]
    assert max(moved) > 0 and all(float(h.min()) > 0 for h in jax.tree.leaves(hess))

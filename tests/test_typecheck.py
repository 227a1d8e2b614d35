import jax.numpy as jnp
import jaxtyping
import pytest

import bmr_eqx as bx


@pytest.fixture(autouse=True)
def needs_the_plugin(request):
    if not request.config.getoption("jaxtyping_packages", default=None):
        pytest.skip("run with --jaxtyping-packages=bmr_eqx,beartype.beartype (the default addopts)")


def test_shape_mismatch_between_arguments_is_caught():
    with pytest.raises(jaxtyping.TypeCheckError, match="hess"):
        bx.delta_f_spike(jnp.zeros(3), jnp.zeros(4), 10.0, 1e-3)
    with pytest.raises(jaxtyping.TypeCheckError, match="labels"):
        bx.nll(jnp.full((3, 2), 0.5), jnp.zeros(4, jnp.int32))


def test_dtype_and_rank_are_checked():
    with pytest.raises(jaxtyping.TypeCheckError):
        bx.accuracy(jnp.zeros(3), jnp.zeros(3, jnp.int32))  # probs must be (batch, classes)
    with pytest.raises(jaxtyping.TypeCheckError):
        bx.nll(jnp.full((3, 2), 0.5), jnp.zeros(3))  # labels must be integers

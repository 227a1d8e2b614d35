"""Leaf-wise score functions: higher score = more important = kept longer."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def magnitude_score(weight: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """|w|."""
    return jnp.abs(weight)


def saliency_score(weight: Float[Array, "*shape"], grad: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """|w·g|: the first-order Taylor estimate of the loss change from removing w."""
    return jnp.abs(weight * grad)


def random_score(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "*shape"]:
    """Uniform random scores."""
    return jax.random.uniform(key, shape)


def normalize_score(score: Float[Array, "*shape"], eps: float = 1e-8) -> Float[Array, "*shape"]:
    """`score / (‖score‖₂ + eps)`: puts leaves on one scale before a global ranking."""
    return score / (jnp.linalg.norm(score.reshape(-1)) + eps)

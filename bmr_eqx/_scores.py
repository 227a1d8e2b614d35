"""Leaf-wise score functions: higher score = more important = kept longer."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._bmr import delta_f_spike


def magnitude_score(weight: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """|w|."""
    return jnp.abs(weight)


def saliency_score(weight: Float[Array, "*shape"], grad: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """|w·g|: the first-order Taylor estimate of the loss change from removing w."""
    return jnp.abs(weight * grad)


def random_score(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "*shape"]:
    """Uniform random scores."""
    return jax.random.uniform(key, shape)


def evidence_score(mean: Float[Array, "*shape"], hess: Float[Array, "*shape"], ess: float | int, weight_decay: float | int) -> Float[Array, "*shape"]:
    """−ΔF of switching each weight off (BMR.md §2): high = the evidence wants the weight kept."""
    return -delta_f_spike(mean, hess, ess, weight_decay)


def signal_to_noise_score(mean: Float[Array, "*shape"], hess: Float[Array, "*shape"], ess: float | int, weight_decay: float | int) -> Float[Array, "*shape"]:
    """|μ|/σ with σ = 1/sqrt(λ(h + δ))."""
    return jnp.abs(mean) * jnp.sqrt(ess * (hess + weight_decay))


def normalize_score(score: Float[Array, "*shape"], eps: float = 1e-8) -> Float[Array, "*shape"]:
    """`score / (‖score‖₂ + eps)`: puts leaves on one scale before a global ranking."""
    return score / (jnp.linalg.norm(score.reshape(-1)) + eps)

"""When masks are recomputed, and at what sparsity. Every method accepts a traced `step`."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

Step = int | Int[ArrayLike, ""]


class AbstractSchedule(eqx.Module):
    """A schedule says at which steps masks are recomputed (`is_update_step`) and which fraction of
    a leaf's target sparsity applies then (`sparsity`)."""

    @abc.abstractmethod
    def is_update_step(self, step: Step) -> Bool[Array, ""]:
        """Whether masks are recomputed at `step`."""

    def sparsity(self, step: Step, target: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
        """The sparsity in force at `step` for a leaf whose final sparsity is `target`."""
        return jnp.asarray(target, jnp.float32)

    def has_started(self, step: Step) -> Bool[Array, ""]:
        """Whether pruning has begun by `step` (its first update step has come). Straight-through
        pruners recompute their masks at every step from then on."""
        return jnp.asarray(step) >= getattr(self, "start", 0)


class NoUpdateSchedule(AbstractSchedule):
    """Masks never change during training (static sparse training; set them with `prune`)."""

    def is_update_step(self, step: Step) -> Bool[Array, ""]:
        return jnp.zeros((), bool)

    def has_started(self, step: Step) -> Bool[Array, ""]:
        return jnp.zeros((), bool)


class OneShotSchedule(AbstractSchedule):
    """Prune once, to the target sparsity, at `step`.

    **Arguments:**

    - `step`: the training step at which the masks are computed (default 0).
    """

    step: int = 0

    def is_update_step(self, step: Step) -> Bool[Array, ""]:
        return jnp.asarray(step) == self.step

    def has_started(self, step: Step) -> Bool[Array, ""]:
        return jnp.asarray(step) >= self.step


def _check_window(start: int, end: int | None, every: int) -> None:
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}.")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}.")
    if end is not None and end < start:
        raise ValueError(f"end ({end}) must be >= start ({start}).")


def _in_window(step: Step, start: int, end: int | None, every: int) -> Bool[Array, ""]:
    step = jnp.asarray(step)
    ok = (step >= start) & ((step - start) % every == 0)
    return ok if end is None else ok & (step <= end)


class PeriodicSchedule(AbstractSchedule):
    """Recompute masks at the full target sparsity every `every` steps from `start` to `end`
    (inclusive; `end=None`: forever).

    **Arguments:**

    - `every`: steps between recomputations (≥ 1).
    - `start`: the first update step (default 0).
    - `end`: the last update step, inclusive (default None: no end).
    """

    every: int
    start: int = 0
    end: int | None = None

    def __check_init__(self):
        _check_window(self.start, self.end, self.every)

    def is_update_step(self, step: Step) -> Bool[Array, ""]:
        return _in_window(step, self.start, self.end, self.every)


class PolynomialSchedule(AbstractSchedule):
    """Gradual pruning (Zhu & Gupta): every `every` steps from `start`, and at `end` (so the target is
    reached even when `end − start` is not a multiple of `every`), at sparsity
    `s·(1 − (1 − p)^power)` with `p = clip(step + 1 − start, 0, end − start)/(end − start)`.

    **Arguments:**

    - `start`: the first update step.
    - `end`: the last update step, inclusive (> `start`); the full target sparsity applies from here on.
    - `every`: steps between recomputations (default 1).
    - `power`: the exponent of the ramp (default 3).
    """

    start: int
    end: int
    every: int = 1
    power: int = 3

    def __check_init__(self):
        _check_window(self.start, self.end, self.every)
        if self.end == self.start:
            raise ValueError(f"PolynomialSchedule needs end > start, got start=end={self.start}.")

    def is_update_step(self, step: Step) -> Bool[Array, ""]:
        return _in_window(step, self.start, self.end, self.every) | (jnp.asarray(step) == self.end)

    def sparsity(self, step: Step, target: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
        span = self.end - self.start
        p = jnp.clip(jnp.asarray(step) + 1 - self.start, 0, span).astype(jnp.float32) / span
        return jnp.asarray(target, jnp.float32) * (1.0 - (1.0 - p) ** self.power)

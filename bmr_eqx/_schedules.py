"""When masks are recomputed, and at what sparsity. Every method accepts a traced `step`; the
update-step questions answer a Python `int` step in Python, with no device work, so that a
`pruner.update` called between jitted steps never waits for the device."""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

Step = int | Int[ArrayLike, ""]
Answer = bool | Bool[Array, ""]


def _step(step: Step) -> int | Array:
    """A Python (or NumPy) integer `step` as a Python `int`; anything else as a JAX array."""
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return int(step)
    return jnp.asarray(step)


class AbstractSchedule(eqx.Module):
    """A schedule says at which steps masks are recomputed (`is_update_step`) and which fraction of
    a leaf's target sparsity applies then (`sparsity`)."""

    @abc.abstractmethod
    def is_update_step(self, step: Step) -> Answer:
        """Whether masks are recomputed at `step`: a Python `bool` for a Python `int` step, else a
        JAX bool scalar."""

    def sparsity(self, step: Step, target: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
        """The sparsity in force at `step` for a leaf whose final sparsity is `target`."""
        return jnp.asarray(target, jnp.float32)

    def has_started(self, step: Step) -> Answer:
        """Whether pruning has begun by `step` (its first update step has come). Straight-through
        pruners recompute their masks at every step from then on. A Python `bool` for a Python
        `int` step, else a JAX bool scalar."""
        return _step(step) >= getattr(self, "start", 0)


class NoUpdateSchedule(AbstractSchedule):
    """Masks never change during training (static sparse training; set them with `prune`)."""

    def is_update_step(self, step: Step) -> Answer:
        return False if isinstance(_step(step), int) else jnp.zeros((), bool)

    def has_started(self, step: Step) -> Answer:
        return self.is_update_step(step)


class OneShotSchedule(AbstractSchedule):
    """Prune once, to the target sparsity, at `step`.

    **Arguments:**

    - `step`: the training step at which the masks are computed (default 0).
    """

    step: int = 0

    def is_update_step(self, step: Step) -> Answer:
        return _step(step) == self.step

    def has_started(self, step: Step) -> Answer:
        return _step(step) >= self.step


def _check_window(start: int, end: int | None, every: int) -> None:
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}.")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}.")
    if end is not None and end < start:
        raise ValueError(f"end ({end}) must be >= start ({start}).")


def _in_window(step: Step, start: int, end: int | None, every: int) -> Answer:
    step = _step(step)
    if isinstance(step, int):
        ok = step >= start and (step - start) % every == 0
        return ok if end is None else ok and step <= end
    # lax, not jnp: each jnp function is a nested jit whose first trace costs a millisecond or more
    c = lambda v: lax.full_like(step, v)  # noqa: E731
    ok = lax.bitwise_and(lax.ge(step, c(start)), lax.eq(lax.rem(lax.sub(step, c(start)), c(every)), c(0)))
    return ok if end is None else lax.bitwise_and(ok, lax.le(step, c(end)))


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

    def is_update_step(self, step: Step) -> Answer:
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

    def is_update_step(self, step: Step) -> Answer:
        return _in_window(step, self.start, self.end, self.every) | (_step(step) == self.end)

    def sparsity(self, step: Step, target: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
        span = self.end - self.start
        p = jnp.clip(jnp.asarray(step) + 1 - self.start, 0, span).astype(jnp.float32) / span
        return jnp.asarray(target, jnp.float32) * (1.0 - (1.0 - p) ** self.power)

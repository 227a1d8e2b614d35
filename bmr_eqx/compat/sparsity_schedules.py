"""JaxPruner's schedules (frozen dataclasses with its field names), answered by `bmr_eqx`'s."""

import dataclasses

import jax
import jax.numpy as jnp

from .. import _schedules as _core
from ._tree import is_none


@dataclasses.dataclass(frozen=True)
class NoUpdateSchedule:
    """Masks never change; the target sparsities apply as they are."""

    def get_sparsity_at_step(self, target_sparsities, step):
        """The sparsity tree in force at `step` (here: the targets)."""
        del step
        return target_sparsities

    def is_mask_update_iter(self, step):
        """Whether masks are recomputed at `step`."""
        del step
        return False


@dataclasses.dataclass(frozen=True)
class OneShotSchedule(NoUpdateSchedule):
    """Masks are computed once, at `target_step`."""

    target_step: int

    def is_mask_update_iter(self, step):
        return jnp.asarray(_core.OneShotSchedule(self.target_step).is_update_step(step))


@dataclasses.dataclass(frozen=True)
class PeriodicSchedule(NoUpdateSchedule):
    """Masks are recomputed at every step that is a multiple of `update_freq`, from
    `update_start_step` to `update_end_step` (inclusive; None: no end)."""

    update_freq: int
    update_start_step: int
    update_end_step: int | None

    def is_mask_update_iter(self, step):
        if step is None:
            return False
        first = -(-self.update_start_step // self.update_freq) * self.update_freq  # the first multiple
        end = self.update_end_step
        if end is not None and end < first:
            return jnp.zeros((), bool)
        return jnp.asarray(_core.PeriodicSchedule(every=self.update_freq, start=max(first, 0), end=end).is_update_step(step))


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule(PeriodicSchedule):
    """Periodic updates at a sparsity that grows as `target·(1 − (1 − p)^power)` with
    `p = clip(step + 1 − start, 0, end − start)/(end − start)`."""

    power: int = 3

    def get_sparsity_at_step(self, target_sparsities, step):
        start, end = self.update_start_step, self.update_end_step
        if end < start:
            raise ValueError(f"The end_step cannot be smaller than the start_step. Got end: {end}, start: {start}")
        if end == start:
            return target_sparsities
        ramp = _core.PolynomialSchedule(start=start, end=end, power=self.power)
        return jax.tree.map(lambda t: None if t is None else ramp.sparsity(step, t), target_sparsities, is_leaf=is_none)

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmr_eqx as bx


def test_erk_hand_computation():
    # raw densities 30/200 and 50/600; eps = 400 / (30 + 50) = 5.
    got = bx.erk_sparsities({"a": (10, 20), "b": (20, 30)}, 0.5)
    assert got["a"] == pytest.approx(1 - 5 * 30 / 200)
    assert got["b"] == pytest.approx(1 - 5 * 50 / 600)


def test_erk_densifies_small_layers_and_keeps_budget():
    got = bx.erk_sparsities({"small": (2, 2), "big": (100, 100)}, 0.5)
    assert got["small"] == 0.0
    # 4 dense entries + (1 - s_big) * 10000 = 0.5 * 10004
    assert got["big"] == pytest.approx(1 - (5002 - 4) / 10000)


def test_leaf_sparsities_uniform_custom_and_errors():
    shapes = {"a": (4, 4), "b": (4, 4)}
    assert bx.leaf_sparsities(shapes, 0.3, "uniform") == {"a": 0.3, "b": 0.3}
    assert bx.leaf_sparsities(shapes, 0.3, {"a": None}) == {"a": None, "b": 0.3}
    with pytest.raises(ValueError, match=r"names \['c'\]"):
        bx.leaf_sparsities(shapes, 0.3, {"c": 0.5})
    with pytest.raises(ValueError, match="Unknown distribution 'lognormal'"):
        bx.leaf_sparsities(shapes, 0.3, "lognormal")
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        bx.leaf_sparsities(shapes, 1.0, "uniform")
    with pytest.raises(ValueError, match="sparsity of `a`"):
        bx.leaf_sparsities(shapes, 0.3, {"a": -0.1})


def test_polynomial_schedule_boundaries():
    sch = bx.PolynomialSchedule(start=100, end=1000, every=10)
    upd = jax.jit(sch.is_update_step)
    assert not upd(99) and upd(100) and not upd(105) and upd(110) and upd(1000) and not upd(1001) and not upd(1010)
    def s(t):
        return float(sch.sparsity(jnp.asarray(t), 0.9))

    assert s(50) == 0.0 and s(99) == 0.0
    assert s(100) == pytest.approx(0.9 * (1 - (1 - 1 / 900) ** 3), rel=1e-4)
    assert s(549) == pytest.approx(0.9 * (1 - 0.5**3))
    assert s(999) == pytest.approx(0.9) and s(1000) == pytest.approx(0.9) and s(5000) == pytest.approx(0.9)


def test_periodic_oneshot_noupdate():
    per = bx.PeriodicSchedule(every=5, start=10, end=30)
    assert [int(t) for t in range(40) if per.is_update_step(t)] == [10, 15, 20, 25, 30]
    assert float(per.sparsity(3, 0.7)) == pytest.approx(0.7)
    forever = bx.PeriodicSchedule(every=3)
    assert bool(forever.is_update_step(3000)) and not bool(forever.is_update_step(3001))
    one = bx.OneShotSchedule(7)
    assert [t for t in range(20) if one.is_update_step(t)] == [7]
    assert not any(bool(bx.NoUpdateSchedule().is_update_step(t)) for t in range(5))


def test_schedule_errors():
    with pytest.raises(ValueError, match="every must be >= 1"):
        bx.PeriodicSchedule(every=0)
    with pytest.raises(ValueError, match="end > start"):
        bx.PolynomialSchedule(start=5, end=5)
    with pytest.raises(ValueError, match=r"end \(3\) must be >= start \(5\)"):
        bx.PolynomialSchedule(start=5, end=3)


def test_polynomial_schedule_updates_at_its_end_off_the_grid():
    sch = bx.PolynomialSchedule(start=0, end=45, every=50)  # 45 is not start + k·every
    steps = [s for s in range(100) if bool(sch.is_update_step(s))]
    assert steps == [0, 45]
    assert float(sch.sparsity(45, 0.9)) == pytest.approx(0.9)
    model = bx.Sparse(eqx.nn.MLP(8, 4, 16, 1, key=jax.random.key(0)))
    pruner = bx.MagnitudePruning(sparsity=0.9, schedule=sch)
    for s in range(60):
        model = pruner.update(model, s)
    assert float(bx.sparsity_summary(model)["total"]) == pytest.approx(0.9, abs=0.01)


def test_erk_options_and_floor_budget_by_hand():
    shapes = {"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}
    # kernel=False: raw (n_in + n_out)/(n_in n_out) of the last two axes: 6/8, 9/18, 10/24;
    # kept budget sum(n - floor(s n)) = 4 + 9 + 24 = 37; divisor 6 + 9 + 20 = 35.
    got = bx.erk_sparsities(shapes, 0.5, kernel=False)
    eps = 37 / 35
    assert got == pytest.approx({"a": 1 - eps * 6 / 8, "b": 1 - eps * 9 / 18, "c": 1 - eps * 10 / 24})
    # power=2: raw (6/8)^2, (9/18)^2, (12/48)^2; "a" would exceed density 1 and is made dense:
    # budget for b, c = 37 - 8 = 29 over 0.25*18 + 0.0625*48 = 7.5.
    got = bx.erk_sparsities(shapes, 0.5, power=2.0)
    assert got == pytest.approx({"a": 0.0, "b": 1 - 29 / 7.5 * 0.25, "c": 1 - 29 / 7.5 * 0.0625})
    # floor: at 0.8 the budget is (8-6) + (18-14) + (48-38) = 16 kept, not 0.2 * 74 = 14.8.
    got = bx.erk_sparsities(shapes, 0.8)
    eps = 16 / (6 + 9 + 12)
    assert got == pytest.approx({"a": 1 - eps * 0.75, "b": 1 - eps * 0.5, "c": 1 - eps * 0.25})


SCHEDULES = [
    bx.PeriodicSchedule(every=5, start=10, end=30),
    bx.PeriodicSchedule(every=3),
    bx.PolynomialSchedule(start=4, end=45, every=10),
    bx.OneShotSchedule(7),
    bx.NoUpdateSchedule(),
]


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_python_steps_are_answered_in_python_like_traced_ones(sch):
    traced = jax.jit(lambda t: (sch.is_update_step(t), sch.has_started(t)))
    for t in range(60):
        got = (sch.is_update_step(t), sch.has_started(t))
        assert all(type(a) is bool for a in got), got  # no device work for a Python int step
        assert got == tuple(bool(a) for a in traced(t)), t
        assert got == (bool(sch.is_update_step(np.int64(t))), bool(sch.has_started(np.int32(t))))


def test_eager_update_off_schedule_touches_no_device():
    # a Python int step is answered in Python: no transfer, no computation, no wait for queued steps
    model = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(eqx.nn.MLP(8, 4, 16, 1, key=jax.random.key(0))))
    for pruner in [bx.MagnitudePruning(sparsity=0.5, schedule=bx.PeriodicSchedule(every=10)),
                   bx.SteMagnitudePruning(sparsity=0.5, schedule=bx.OneShotSchedule(5))]:
        m = model if not pruner.straight_through else bx.Sparse(model.model, masks=model.masks, straight_through=True)
        with jax.transfer_guard("disallow"):
            assert pruner.update(m, 3) is m
        assert pruner.update(m, 10 if not pruner.straight_through else 6) is not m  # update steps still update

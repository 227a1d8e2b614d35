"""The NumPy kernels run inside XLA:CPU programs (`bmr_eqx._host`): through the FFI, batched
under vmap, errors surfaced, and the pure_callback fallback giving the same results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmr_eqx import _host


def row_stats(x, scale):
    """Per row of `x` (last axis): max times `scale`, and the argmin; broadcasts over leading axes."""
    return x.max(axis=-1) * scale, np.argmin(x, axis=-1).astype(np.int32)


PROBE = (np.array([[1.0, 3.0, 2.0]], np.float32), np.array([2.0], np.float32))


def out_of(x):
    return (jax.ShapeDtypeStruct((), x.dtype), jax.ShapeDtypeStruct((), jnp.int32))


@pytest.fixture(params=["ffi", "pure_callback"])
def kernel(request, monkeypatch):
    name = f"bmr_eqx_test_row_stats_{request.param}"
    if request.param == "pure_callback":
        monkeypatch.setattr(_host, "_register", lambda *a: None)
    call = _host.host_kernel(name, row_stats, PROBE)
    yield request.param, call
    assert (_host._registered[name] is not None) == (request.param == "ffi")


def test_host_kernel_reads_operands_and_writes_results(kernel):
    kind, call = kernel
    x = jax.random.normal(jax.random.key(0), (5, 7))
    f = jax.jit(lambda x, s: call(out_of(x[0]), x[0], s))
    for i in range(5):
        got = f(x.at[0].set(x[i]), jnp.float32(i))
        np.testing.assert_allclose(got[0], np.asarray(x[i]).max() * i)
        assert int(got[1]) == int(np.argmin(x[i]))
    text = jax.jit(lambda x: call(out_of(x), x, 1.0)).lower(x[0]).as_text()
    assert ("callback" in text) == (kind == "pure_callback")


def test_host_kernel_batches_under_vmap(kernel):
    _, call = kernel
    x = jax.random.normal(jax.random.key(1), (3, 4, 6))
    scale = jnp.arange(3.0)
    got = jax.jit(jax.vmap(jax.vmap(lambda x, s: call(out_of(x), x, s), (0, None)), (0, 0)))(x, scale)
    np.testing.assert_allclose(got[0], np.asarray(x).max(-1) * np.asarray(scale)[:, None])
    np.testing.assert_array_equal(got[1], np.argmin(np.asarray(x), -1))


def test_a_failing_kernel_raises_with_its_name_and_error():
    def broken(x):
        if x.size > 1:
            raise RuntimeError("no such luck")
        return (x * 2,)

    call = _host.host_kernel("bmr_eqx_test_broken", broken, (np.ones(1, np.float32),))
    f = jax.jit(lambda x: call((jax.ShapeDtypeStruct(x.shape, x.dtype),), x))
    np.testing.assert_array_equal(f(jnp.ones(1))[0], [2.0])  # the FFI path, checked on the probe
    assert _host._registered["bmr_eqx_test_broken"] is not None
    with pytest.raises(Exception, match="bmr_eqx_test_broken.*RuntimeError: no such luck"):
        jax.block_until_ready(f(jnp.ones(3)))


CACHED_TOPK = """
import sys, jax, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import bmr_eqx as bx
x = np.random.default_rng(0).normal(size=5000).astype(np.float32)
mask = np.asarray(jax.jit(lambda x: bx.topk_mask(x, 0.9))(x))
assert mask.sum() == 500 and (x[mask].min() > x[~mask].max()), mask.sum()
"""


def test_a_step_with_the_host_top_k_is_written_to_and_read_from_the_persistent_cache(tmp_path):
    # A Python callback would keep the executable out of JAX's persistent compilation cache; the
    # FFI custom call does not, and a second process (which registers the target when it traces)
    # runs the cached executable.
    import os
    import subprocess
    import sys

    script = tmp_path / "topk.py"
    script.write_text(CACHED_TOPK)
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for run in range(2):
        done = subprocess.run([sys.executable, str(script), str(cache)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        entries = {p.name for p in cache.iterdir()}
        assert any(e.startswith("jit__lambda") for e in entries), entries
        if run == 0:
            first = entries
    assert entries == first  # the second process found every executable it needed


def test_the_first_use_registers_the_custom_call_even_where_transfers_are_disallowed():
    # The probe moves its operands explicitly: a first top-k traced under a transfer guard must
    # still get the custom call (a failed probe would leave the process on pure_callback).
    call = _host.host_kernel("bmr_eqx_test_guarded", row_stats, PROBE)
    x = jnp.arange(6.0).reshape(2, 3)
    with jax.transfer_guard("disallow"):
        got = jax.jit(lambda x: call(out_of(x[0]), x[0], jnp.float32(2)))(x)
    assert _host._registered["bmr_eqx_test_guarded"] is not None
    np.testing.assert_allclose(got[0], 4.0)

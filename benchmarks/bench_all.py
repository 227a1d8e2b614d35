"""Every performance figure of bmr_eqx in one table, side by side with JaxPruner and blrax when their
source trees are given (the project never depends on them).

The models are tanh MLPs with dict params (`{"l0": {"kernel", "bias"}, ...}`), as in JaxPruner's and
blrax's own usage; adam; 90% uniform magnitude pruning; a regression loss. Every step function is
jitted with its state donated; rounds alternate between all variants of a size and the fastest
round of each counts. Rows (per size):

* dense step (ms): a plain adam step;
* dense / dense: the same dense step jitted twice and timed as two variants: the noise of this run,
  against which to read every ratio near 1;
* steady / dense: masks fixed (bmr_eqx: `Sparse` + `masked_updates` + a `pruner.update` whose
  schedule does not fire; JaxPruner: `wrap_optax` + `post_gradient_update`, no update that step);
  "update between steps": the same `pruner.update` called between the jitted steps with a Python
  int step instead of inside them (no control flow in the step);
* mask update / dense: the same with the masks recomputed every step;
* RigL update / dense (bmr_eqx): a drop-and-grow update every step;
* IVON / adam: an IVON step (noisy value-and-grad, update) of bmr_eqx and of blrax;
* IVON pruned / dense: the bmr_eqx IVON step of a 90%-pruned posterior over a dense one;
* BMR update / IVON: the IVON step of a pruned posterior whose `BMRPruning` fires every step, over
  the same step without pruning;
* compile sparse / dense, compile IVON+BMR / IVON: trace + compile times of the step functions;
* memory (MB): XLA's temporary buffers of the dense, steady and mask-update steps
  (`compiled.memory_analysis()`), besides the parameters and optimizer state they take;
* top-k over N scores (ms), bmr_eqx and JaxPruner, and the host memory NumPy allocates for
  bmr_eqx's top-k on a one-device CPU (it selects there; see the docs' "How it works").

    python benchmarks/bench_all.py                       # bmr_eqx alone
    python benchmarks/bench_all.py --jaxpruner-src ~/src/jaxpruner --blrax-src ~/src/blrax/src

JaxPruner needs `chex` and `ml_collections` importable (and `flax`, for which a minimal stand-in is
used if it is missing); blrax needs `chex` (a stand-in is used if it is missing).
"""

import argparse
import os
import sys
import time
import tracemalloc
import types
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import bmr_eqx as bx

sys.path.insert(0, os.path.dirname(__file__))
from common import run_steps, timeit  # noqa: E402

# ---- the model --------------------------------------------------------------------------------


def mlp_params(width, depth, key=0):
    keys = jax.random.split(jax.random.key(key), depth)
    return {f"l{i}": {"kernel": jax.random.normal(k, (width, width)) / width**0.5, "bias": jnp.zeros(width)}
            for i, k in enumerate(keys)}


def mlp_loss(p, x, y):
    for i in range(len(p)):
        x = jnp.tanh(x @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"])
    return 0.5 * jnp.mean((x - y) ** 2)


def n_params(p):
    return sum(a.size for a in jax.tree.leaves(p))


# ---- the foreign libraries, only if given -----------------------------------------------------


def _stub_chex():
    if "chex" not in sys.modules:
        try:
            import chex  # noqa: F401
        except ImportError:
            any_ = typing.Any
            sys.modules["chex"] = types.SimpleNamespace(
                Array=any_, ArrayTree=any_, ArrayNumpy=any_, Numeric=any_, PRNGKey=any_, ArrayDType=any_,
                assert_trees_all_close=lambda *a, **k: None,
            )


def _stub_flax():
    """A stand-in for the two pieces of flax JaxPruner imports: traverse_util and FrozenDict."""
    try:
        import flax  # noqa: F401
        return
    except ImportError:
        pass

    def flatten_dict(xs, keep_empty_nodes=False, is_leaf=None, sep=None):
        out = {}

        def walk(x, prefix):
            if isinstance(x, dict) and x:
                for k, v in x.items():
                    walk(v, prefix + (k,))
            else:
                out[sep.join(prefix) if sep else prefix] = x

        walk(xs, ())
        return out

    def unflatten_dict(xs, sep=None):
        out = {}
        for path, v in xs.items():
            path = path.split(sep) if sep else path
            node = out
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = v
        return out

    frozen = types.SimpleNamespace(FrozenDict=type("FrozenDict", (dict,), {}))
    flax_mod = types.ModuleType("flax")
    flax_mod.traverse_util = types.SimpleNamespace(flatten_dict=flatten_dict, unflatten_dict=unflatten_dict)
    flax_mod.core = types.SimpleNamespace(frozen_dict=frozen, freeze=lambda x: x)
    sys.modules["flax"] = flax_mod


def import_jaxpruner(src):
    _stub_chex()
    _stub_flax()
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree_util.tree_map  # removed from JAX; JaxPruner still calls it
    sys.path.insert(0, src)
    import jaxpruner

    if not os.path.abspath(jaxpruner.__file__).startswith(os.path.abspath(src)):
        raise SystemExit(f"--jaxpruner-src {src} does not hold the jaxpruner package that was imported")
    return jaxpruner


def import_blrax(src):
    _stub_chex()
    sys.path.insert(0, src)
    import blrax

    return blrax


# ---- step functions ---------------------------------------------------------------------------


def jit_step(fn):
    return jax.jit(fn, donate_argnums=(0, 1))


def bx_steps(p, x, y):
    """bmr_eqx's steps: name -> (step(params, state, i) -> (params, state, i + 1), params, state)."""
    adam = optax.adam(1e-4)
    masked = bx.masked_updates(adam)
    loss = lambda m: mlp_loss(m.masked() if isinstance(m, bx.Sparse) else m, x, y)  # noqa: E731

    def dense(m, s, i):
        g = jax.grad(loss)(m)
        u, s = adam.update(g, s, m)
        return optax.apply_updates(m, u), s, i + 1

    def sparse_with(pruner):
        def step(m, s, i):
            g = eqx.filter_grad(loss)(m)
            u, s = masked.update(g, s, m)
            m = eqx.apply_updates(m, u)
            return (m if pruner is None else pruner.update(m, i)), s, i + 1

        return step

    rigl = bx.RigL(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1), drop_decay="constant")

    def rigl_step(m, s, i):
        g = eqx.filter_grad(lambda m: loss(bx.straight_through(m)))(m)
        u, s = masked.update(bx.mask_gradients(g, m), s, m)
        m = eqx.apply_updates(m, u)
        new = rigl.update(m, i, grads=g)
        return new, bx.reset_regrown(s, m, new), i + 1

    never = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=10**9, start=10**9))
    every = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1))
    sparse = bx.MagnitudePruning(sparsity=0.9).prune(bx.Sparse(p))

    ivon = bx.ivon(1e-3)
    vg = bx.noisy_value_and_grad(lambda m: loss(m))

    def ivon_with(pruner):
        def step(post, s, i):
            _, g, h = vg(post, jax.random.fold_in(jax.random.key(0), i))
            u, s = ivon.update(g, s, post, hess_estimate=h)
            post = eqx.apply_updates(post, u)
            return (post if pruner is None else pruner.update(post, i)), s, i + 1

        return step

    bmr = bx.BMRPruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1))
    post = bx.Posterior(p, ess=10_000)
    sparse_post = bx.Posterior(sparse, ess=10_000)
    return {
        "dense": (dense, p, adam.init(p)),
        "dense again": (dense, p, adam.init(p)),
        "steady": (sparse_with(never), sparse, masked.init(sparse)),
        "steady between": (sparse_with(None), sparse, masked.init(sparse), never.update),
        "update": (sparse_with(every), sparse, masked.init(sparse)),
        "rigl": (rigl_step, sparse, masked.init(sparse)),
        "ivon": (ivon_with(None), post, ivon.init(post)),
        "ivon sparse": (ivon_with(None), sparse_post, ivon.init(sparse_post)),
        "ivon+bmr": (ivon_with(bmr), sparse_post, ivon.init(sparse_post)),
    }


def jaxpruner_steps(jaxpruner, p, x, y):
    def magnitude(freq, end):
        pruner = jaxpruner.MagnitudePruning(
            sparsity_distribution_fn=lambda t: jaxpruner.sparsity_distributions.uniform(t, 0.9),
            scheduler=jaxpruner.PeriodicSchedule(update_freq=freq, update_start_step=0, update_end_step=end),
        )
        tx = pruner.wrap_optax(optax.adam(1e-4))

        def step(p, s, i):
            g = jax.grad(mlp_loss)(p, x, y)
            u, s = tx.update(g, s, p)
            return pruner.post_gradient_update(optax.apply_updates(p, u), s), s, i + 1

        state = tx.init(p)
        p1, s1, _ = jax.jit(step)(p, state, 0)  # the first call (count 0) prunes
        return step, p1, s1

    return {"jp steady": magnitude(10**9, 0), "jp update": magnitude(1, 10**9)}


def blrax_steps(blrax, p, x, y):
    ivon = blrax.ivon(learning_rate=1e-3, ess=10_000.0, hess_init=1.0)

    def step(p, s, i):
        _, g, s = blrax.noisy_value_and_grad(lambda p, key: mlp_loss(p, x, y), s, p,
                                             jax.random.fold_in(jax.random.PRNGKey(0), i))
        u, s = ivon.update(g, s, p)
        return optax.apply_updates(p, u), s, i + 1

    return {"blrax ivon": (step, p, ivon.init(p))}


# ---- measuring --------------------------------------------------------------------------------


def compile_seconds(fn, params, state):
    """Trace + compile time of a fresh jit of `fn` (the fastest of three, JAX's caches cleared before
    each, so one-time Python-side costs of the first trace count for no variant), and its
    temporary memory in MB."""
    seconds = []
    for _ in range(3):
        jax.clear_caches()
        t0 = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(params, state, jnp.asarray(0)).compile()
        seconds.append(time.perf_counter() - t0)
    seconds = min(seconds)
    mem = compiled.memory_analysis()
    temp = None if mem is None else getattr(mem, "temp_size_in_bytes", None)
    return seconds, (None if temp is None else temp / 2**20)


def main():
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="*", default=["1024x4", "4096x4"] if gpu else ["1024x1", "1024x2"],
                        help="WIDTHxDEPTH of the MLPs (DEPTH layers of WIDTH x WIDTH)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--topk", nargs="*", type=float, default=[1e6, 1e7, 1e8] if gpu else [1e6, 1e7])
    parser.add_argument("--jaxpruner-src", help="a JaxPruner source tree (the folder holding jaxpruner/)")
    parser.add_argument("--blrax-src", help="a blrax source folder (the one holding blrax/, i.e. src/)")
    args = parser.parse_args()
    jaxpruner = import_jaxpruner(args.jaxpruner_src) if args.jaxpruner_src else None
    blrax = import_blrax(args.blrax_src) if args.blrax_src else None
    print(f"backend {jax.default_backend()} | device {jax.devices()[0].device_kind} | {os.cpu_count()} CPU cores"
          f" | jax {jax.__version__} | batch {args.batch}")

    rows = {}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.layers]
    columns = []
    for width, depth in sizes:
        p = mlp_params(width, depth)
        x = jax.random.normal(jax.random.key(1), (args.batch, width))
        y = jax.random.normal(jax.random.key(2), (args.batch, width))
        columns.append(f"{n_params(p) / 1e6:.1f}M")
        steps = bx_steps(p, x, y)
        if jaxpruner:
            steps.update(jaxpruner_steps(jaxpruner, p, x, y))
        if blrax:
            steps.update(blrax_steps(blrax, p, x, y))
        compiles = {k: compile_seconds(steps[k][0], steps[k][1], steps[k][2]) for k in
                    ("dense", "steady", "update", "ivon sparse", "ivon+bmr")}
        t = timeit({k: run_steps(jit_step(fn), (a, b, jnp.asarray(0)), args.steps, *between)
                    for k, (fn, a, b, *between) in steps.items()}, args.reps)
        t = {k: v / args.steps for k, v in t.items()}

        def put(name, value, fmt="{:.3f}"):
            rows.setdefault(name, []).append("-" if value is None else fmt.format(value))

        put("dense adam step (ms)", t["dense"] * 1e3, "{:.2f}")
        put("dense / dense (this run's noise)", t["dense again"] / t["dense"])
        put("steady / dense: bmr_eqx", t["steady"] / t["dense"])
        put("steady / dense: bmr_eqx, update between steps", t["steady between"] / t["dense"])
        put("steady / dense: JaxPruner", t["jp steady"] / t["dense"] if jaxpruner else None)
        put("mask update / dense: bmr_eqx", t["update"] / t["dense"], "{:.2f}")
        put("mask update / dense: JaxPruner", t["jp update"] / t["dense"] if jaxpruner else None, "{:.2f}")
        put("RigL update / dense: bmr_eqx", t["rigl"] / t["dense"], "{:.2f}")
        put("IVON / adam: bmr_eqx", t["ivon"] / t["dense"], "{:.2f}")
        put("IVON / adam: blrax", t["blrax ivon"] / t["dense"] if blrax else None, "{:.2f}")
        put("IVON bmr_eqx / blrax", t["ivon"] / t["blrax ivon"] if blrax else None)
        put("IVON pruned / IVON dense: bmr_eqx", t["ivon sparse"] / t["ivon"])
        put("BMR update / IVON: bmr_eqx", t["ivon+bmr"] / t["ivon sparse"], "{:.2f}")
        put("compile sparse / dense", compiles["steady"][0] / compiles["dense"][0], "{:.2f}")
        put("compile mask update / dense", compiles["update"][0] / compiles["dense"][0], "{:.2f}")
        put("compile IVON+BMR / IVON", compiles["ivon+bmr"][0] / compiles["ivon sparse"][0], "{:.2f}")
        for k in ("dense", "steady", "update"):
            put(f"temp memory {k} step (MB)", compiles[k][1], "{:.1f}")
        put("params (MB)", n_params(p) * 4 / 2**20, "{:.1f}")

    topk_bx = jax.jit(bx.topk_mask)
    topk_jp = jax.jit(jaxpruner.mask_calculator.topk_mask_calculator) if jaxpruner else None
    topk_rows = []
    for n in args.topk:
        scores = jax.random.normal(jax.random.key(3), (int(n),))
        fns = {"bx": lambda s=scores: topk_bx(s, jnp.float32(0.9))}
        if topk_jp:
            fns["jp"] = lambda s=scores: topk_jp(s, jnp.float32(0.9))
        tt = timeit(fns, max(3, args.reps // 2))
        tracemalloc.start()  # NumPy's allocations (the CPU top-k selects on the host), not XLA's
        jax.block_until_ready(fns["bx"]())
        host_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        topk_rows.append((int(n), tt["bx"] * 1e3, tt.get("jp"), host_mb))

    name_w = max(len(k) for k in rows) + 2
    print(f"{'figure':<{name_w}}" + "".join(f"{c:>10}" for c in columns))
    for name, values in rows.items():
        print(f"{name:<{name_w}}" + "".join(f"{v:>10}" for v in values))
    for n, ms_bx, s_jp, host_mb in topk_rows:
        jp = "-" if s_jp is None else f"{s_jp * 1e3:.2f}"
        print(f"top-k over {n:,} scores (ms): bmr_eqx {ms_bx:.2f}, JaxPruner {jp}"
              f" | bmr_eqx host scratch {host_mb:.1f} MB (scores: {n * 4 / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()

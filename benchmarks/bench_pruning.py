"""Cost of bmr_eqx's pruning machinery next to a dense training step, measured side by side.

For tanh MLPs trained with adam at 90% uniform magnitude sparsity it prints, per model size:

* steady-state masked step / dense step (a `Sparse` model, `masked_updates`, and a
  `pruner.update` whose schedule does not fire that step);
* mask-update step / dense step (the same step where the schedule fires: scores, top-k, new masks);
* RigL update step / dense step (a drop-and-grow update at every step: the dense gradient through
  `straight_through`, drop by |w|, grow by |g|, regrown weights and adam moments reset);
* the time of one unstructured top-k mask over N scores.

    python benchmarks/bench_pruning.py                 # sizes chosen for the backend
    python benchmarks/bench_pruning.py --layers 1024x4 --topk 1e6
"""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import bmr_eqx as bx

sys.path.insert(0, os.path.dirname(__file__))
from common import n_params, parse, run_steps, size_parser, tanh_mlp, timeit  # noqa: E402


def make_steps(width, depth, batch):
    dense, x, y = tanh_mlp(width, depth, batch)
    opt = optax.adam(1e-4)

    def loss(m):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    @eqx.filter_jit(donate="all")
    def dense_step(m, s, i):
        g = eqx.filter_grad(loss)(m)
        u, s = opt.update(g, s, m)
        return eqx.apply_updates(m, u), s, i + 1

    masked_opt = bx.masked_updates(opt)

    def sparse_step_for(pruner):
        @eqx.filter_jit(donate="all")
        def step(m, s, i):
            g = eqx.filter_grad(loss)(m)
            u, s = masked_opt.update(g, s, m)
            m = pruner.update(eqx.apply_updates(m, u), i, grads=g)
            return m, s, i + 1

        return step

    rigl = bx.RigL(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1), drop_decay="constant")

    @eqx.filter_jit(donate="all")
    def rigl_step(m, s, i):
        dense_g = eqx.filter_grad(lambda m: loss(bx.straight_through(m)))(m)
        u, s = masked_opt.update(bx.mask_gradients(dense_g, m), s, m)
        m = eqx.apply_updates(m, u)
        new = rigl.update(m, i, grads=dense_g)
        return new, bx.reset_regrown(s, m, new), i + 1

    steady = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=10**9, start=10**9))
    every = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1))
    sparse = bx.MagnitudePruning(sparsity=0.9).prune(dense)
    return dict(
        n_params=n_params(dense),
        dense=(dense_step, dense, opt.init(eqx.filter(dense, eqx.is_inexact_array))),
        steady=(sparse_step_for(steady), sparse, masked_opt.init(sparse)),
        update=(sparse_step_for(every), sparse, masked_opt.init(sparse)),
        rigl=(rigl_step, sparse, masked_opt.init(sparse)),
    )


def main():
    parser = size_parser(__doc__)
    gpu = jax.default_backend() != "cpu"
    parser.add_argument("--topk", nargs="*", type=float, default=[1e6, 1e8] if gpu else [1e6, 1e7])
    args = parse(parser)
    print(f"{'params':>10} {'dense ms':>9} {'steady ms':>10} {'update ms':>10} {'RigL ms':>9} {'steady/dense':>13}"
          f" {'update/dense':>13} {'RigL/dense':>11}")
    for width, depth in args.sizes:
        cfg = make_steps(width, depth, args.batch)
        runners = {}
        for name in ("dense", "steady", "update", "rigl"):
            step, model, state = cfg[name]
            runners[name] = run_steps(step, (model, state, jnp.asarray(0)), args.steps)
        t = {k: v / args.steps for k, v in timeit(runners, args.reps).items()}
        print(f"{cfg['n_params'] / 1e6:>9.1f}M {t['dense'] * 1e3:>9.2f} {t['steady'] * 1e3:>10.2f} {t['update'] * 1e3:>10.2f}"
              f" {t['rigl'] * 1e3:>9.2f} {t['steady'] / t['dense']:>13.3f} {t['update'] / t['dense']:>13.3f}"
              f" {t['rigl'] / t['dense']:>11.3f}")
    topk = jax.jit(bx.topk_mask)
    for n in args.topk:
        scores = jax.random.normal(jax.random.key(0), (int(n),))
        ms = timeit({"topk": lambda s=scores: topk(s, jnp.float32(0.9))}, args.reps)["topk"] * 1e3
        print(f"top-k mask over {int(n):,} scores: {ms:.2f} ms")


if __name__ == "__main__":
    main()

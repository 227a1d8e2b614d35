"""Cost of IVON and of BMR pruning next to adam, measured side by side in one process.

For tanh MLPs (regression, batch 256, one Monte-Carlo sample) it prints, per model size:

* IVON step / adam step (dense `Posterior(model)` vs a plain model; noisy value-and-grad + update);
* BMR update step / plain IVON step (a `Posterior(Sparse(model))` whose `BMRPruning` schedule
  fires every step, vs the same model and IVON step without pruning).

The issue's reference: blrax measured IVON/adam = 1.57 (4.2M), 1.39 (67M), 1.37 (134M) on one
H100 and 1.66 on the 2-core CPU (2.1M).

    python benchmarks/bench_ivon.py [--layers 1024x2 1024x4] [--reps 15]
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


def make_runners(width, depth, batch, steps):
    model, x, y = tanh_mlp(width, depth, batch)

    def loss(m):
        return 0.5 * jnp.mean((jax.vmap(m)(x) - y) ** 2)

    adam = optax.adam(1e-4)

    @eqx.filter_jit(donate="all")
    def adam_step(m, s, i):
        g = eqx.filter_grad(loss)(m)
        u, s = adam.update(g, s, m)
        return eqx.apply_updates(m, u), s, i + 1

    ivon = bx.ivon(1e-3)
    value_and_grad = bx.noisy_value_and_grad(loss)

    def ivon_step_for(pruner):
        @eqx.filter_jit(donate="all")
        def step(post, s, i):
            _, g, h = value_and_grad(post, jax.random.fold_in(jax.random.key(0), i))
            u, s = ivon.update(g, s, post, hess_estimate=h)
            post = eqx.apply_updates(post, u)
            if pruner is not None:
                post = pruner.update(post, i)
            return post, s, i + 1

        return step

    dense_post = bx.Posterior(model, ess=10_000)
    sparse_post = bx.Posterior(bx.Sparse(model), ess=10_000)
    bmr = bx.BMRPruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1))
    zero = jnp.asarray(0)
    return n_params(model), {
        "adam": run_steps(adam_step, (model, adam.init(eqx.filter(model, eqx.is_inexact_array)), zero), steps),
        "ivon": run_steps(ivon_step_for(None), (dense_post, ivon.init(dense_post), zero), steps),
        "ivon sparse": run_steps(ivon_step_for(None), (sparse_post, ivon.init(sparse_post), zero), steps),
        "ivon + bmr": run_steps(ivon_step_for(bmr), (sparse_post, ivon.init(sparse_post), zero), steps),
    }


def main():
    parser = size_parser(__doc__)
    args = parse(parser)
    print(f"{'params':>8} {'adam ms':>8} {'ivon ms':>8} {'bmr ms':>8} {'ivon/adam':>10} {'bmr/ivon':>9}")
    for width, depth in args.sizes:
        n, runners = make_runners(width, depth, args.batch, args.steps)
        t = {k: v / args.steps for k, v in timeit(runners, args.reps).items()}
        print(f"{n / 1e6:>7.1f}M {t['adam'] * 1e3:>8.2f} {t['ivon'] * 1e3:>8.2f} {t['ivon + bmr'] * 1e3:>8.2f}"
              f" {t['ivon'] / t['adam']:>10.3f} {t['ivon + bmr'] / t['ivon sparse']:>9.3f}")


if __name__ == "__main__":
    main()

"""Shared timing helpers for the benchmarks (side-by-side, round-robin, in one process)."""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp


def timeit(fns, reps):
    """Fastest seconds of each function over `reps` rounds, run round-robin so that machine noise
    hits every variant alike. Each function is called twice first (compilation, warm-up)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def run_steps(step, carry, n, between=None):
    """A function running `carry = step(*carry)` `n` times from a private copy of `carry`; the
    step's last output must be the step counter it takes as its last input. `between(model, i)`,
    if given, runs after each step on the step's first output, with `i` the step as a Python int
    (e.g. `pruner.update` called between jitted steps)."""
    carry = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, carry)
    count = 0

    def go():
        nonlocal carry, count
        for _ in range(n):
            carry = step(*carry)
            count += 1
            if between is not None:
                carry = (between(carry[0], count), *carry[1:])
        return jax.tree.leaves(carry)[0]

    return go


def tanh_mlp(width, depth, batch, key=0):
    """A tanh MLP of `depth` linear layers of `width`×`width`, and a regression batch for it."""
    model = eqx.nn.MLP(width, width, width, depth - 1, activation=jnp.tanh, key=jax.random.key(key))
    x = jax.random.normal(jax.random.key(key + 1), (batch, width))
    y = jax.random.normal(jax.random.key(key + 2), (batch, width))
    return model, x, y


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def size_parser(doc):
    """The command line every benchmark shares (MLP sizes, batch, steps, repetitions); prints the
    machine it runs on once parsed by `parse`."""
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="*", default=["1024x4", "4096x4", "4096x8"] if gpu else ["1024x2", "1024x4"],
                        help="WIDTHxDEPTH of the MLPs (DEPTH linear layers of WIDTH x WIDTH)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--reps", type=int, default=15)
    return parser


def parse(parser):
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()}  device: {jax.devices()[0].device_kind}  jax {jax.__version__}"
          f"  batch {args.batch}")
    args.sizes = [tuple(int(v) for v in spec.split("x")) for spec in args.layers]
    return args

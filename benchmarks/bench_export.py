"""Sparse inference after `bx.to_bcoo`: an MLP of `eqx.nn.Linear` layers on BCOO weight matrices (and
2:4 / 1:4 `NMMatrix` weights) against the same masked model run dense, side by side in one process.
Prints the time of a forward pass over a batch (vmapped) and of one example, and the ratio
sparse / dense (< 1: the sparse model is faster). `bmr_eqx._export.BREAK_EVEN_DENSITY`, the density
above which `to_bcoo` warns, comes from this table.

    python benchmarks/bench_export.py [--width 1024] [--depth 3] [--batch 256]
"""

import argparse
import os
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp

import bmr_eqx as bx

sys.path.insert(0, os.path.dirname(__file__))
from common import timeit  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sparsity", nargs="*", type=float, default=[0.9, 0.95, 0.99])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"backend {jax.default_backend()} | device {jax.devices()[0].device_kind} | jax {jax.__version__} | "
          f"MLP {args.depth} x ({args.width}x{args.width}) | batch {args.batch}")
    mlp = eqx.nn.MLP(args.width, args.width, args.width, args.depth - 1, activation=jnp.tanh, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (args.batch, args.width))
    cases = [(f"{s:.0%} unstructured", bx.MagnitudePruning(sparsity=s), None) for s in args.sparsity]
    cases += [("2:4", bx.MagnitudePruning(sparsity_type="2:4"), (2, 4)), ("1:4", bx.Pruner(bx.Magnitude(), bx.NByM(1, 4)), (1, 4))]
    rows = {}
    for name, pruner, nm in cases:
        pruned = pruner.prune(bx.Sparse(mlp))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = bx.to_bcoo(pruned, n_by_m=nm)
        masked = pruned.masked()
        batch = {k: eqx.filter_jit(lambda m, x: jax.vmap(m)(x)) for k in ("dense", "sparse")}
        one = {k: eqx.filter_jit(lambda m, x: m(x)) for k in ("dense", "sparse")}
        t = timeit({"batch dense": lambda: batch["dense"](masked, x), "batch sparse": lambda: batch["sparse"](exported, x),
                    "one dense": lambda: one["dense"](masked, x[0]), "one sparse": lambda: one["sparse"](exported, x[0])},
                   args.reps)
        rows[name] = t
    print(f"{'weights':18s}{'batch dense':>13s}{'batch sparse':>14s}{'ratio':>7s}{'one dense':>12s}{'one sparse':>12s}{'ratio':>7s}")
    for name, t in rows.items():
        print(f"{name:18s}{t['batch dense'] * 1e3:11.2f}ms{t['batch sparse'] * 1e3:12.2f}ms"
              f"{t['batch sparse'] / t['batch dense']:7.2f}{t['one dense'] * 1e6:10.0f}µs{t['one sparse'] * 1e6:10.0f}µs"
              f"{t['one sparse'] / t['one dense']:7.2f}")
    return rows


if __name__ == "__main__":
    main()

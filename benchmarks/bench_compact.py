"""Latency after `bx.compact`: a CNN with BatchNorm whose coupled channel groups are pruned at
50/75/90% (`sparsity_type=bx.Coupled(groups)`), run as the masked model, as the compacted model, and
as a dense CNN built directly at the compacted width, side by side in one process (one jitted
inference forward pass over a batch; fastest of `--reps` round-robin rounds).

Prints the times and two ratios: compacted / dense-at-that-width (the goal: within 10%, i.e.
≤ 1.10) and masked / compacted (the speedup compaction gives), and whether the compacted model has
the static structure of the dense one built at its width (then both run the same compiled program,
and any difference in time is the machine's noise).

    python benchmarks/bench_compact.py [--channels 64 128] [--image 16] [--batch 64] [--reps 20]
"""

import argparse
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

import bmr_eqx as bx

sys.path.insert(0, os.path.dirname(__file__))
from common import timeit  # noqa: E402


class CNN(eqx.Module):
    """Conv(3→c1) → BatchNorm → relu → Conv(c1→c2, stride 2) → BatchNorm → relu → Conv(c2→c2) → relu
    → mean-pool → Linear(c2→10)."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    conv3: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key, c1, c2, c3=None):
        c3 = c2 if c3 is None else c3
        ks = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(3, c1, 3, padding=1, key=ks[0])
        self.bn1 = eqx.nn.BatchNorm(c1, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=ks[1])
        self.bn2 = eqx.nn.BatchNorm(c2, axis_name="batch", mode="batch")
        self.conv3 = eqx.nn.Conv2d(c2, c3, 3, padding=1, key=ks[2])
        self.head = eqx.nn.Linear(c3, 10, key=ks[3])

    def __call__(self, x, state):
        h, state = self.bn1(self.conv1(x), state)
        h, state = self.bn2(self.conv2(jax.nn.relu(h)), state)
        h = jax.nn.relu(self.conv3(jax.nn.relu(h)))
        return self.head(jnp.mean(h, axis=(1, 2))), state


@eqx.filter_jit
def forward(model, state, x):
    return jax.vmap(eqx.nn.inference_mode(model), in_axes=(0, None))(x, state)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs=2, default=[64, 128])
    parser.add_argument("--image", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.75, 0.9])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    c1, c2 = args.channels
    print(f"backend {jax.default_backend()} | device {jax.devices()[0].device_kind} | jax {jax.__version__} | "
          f"CNN {c1}/{c2}/{c2} channels | {args.image}x{args.image} images | batch {args.batch}")
    model, state = eqx.nn.make_with_state(CNN)(jax.random.key(0), c1, c2)
    x = jax.random.normal(jax.random.key(1), (args.batch, 3, args.image, args.image))
    groups = bx.dependency_groups(model, x[0], state)
    print(f"{'sparsity':>9}{'channels':>14}{'masked ms':>11}{'compact ms':>12}{'dense-at-width ms':>19}"
          f"{'compact/dense-at-width':>24}{'masked/compact':>16}{'same program':>14}")
    for s in args.sparsity:
        pruned = bx.MagnitudePruning(sparsity=s, sparsity_type=bx.Coupled(groups)).prune(bx.Sparse(model))
        small, small_state = bx.compact(pruned, x[0], state)
        widths = (small.conv1.out_channels, small.conv2.out_channels, small.conv3.out_channels)
        fresh, fresh_state = eqx.nn.make_with_state(CNN)(jax.random.key(2), *widths)
        masked = pruned.masked()
        # the two pairs are timed apart, so the big masked model never runs just before a small one
        # (it would leave the caches cold for it)
        t = timeit({"compact": lambda: forward(small, small_state, x), "fresh": lambda: forward(fresh, fresh_state, x)},
                   args.reps)
        t_masked = timeit({"masked": lambda: forward(masked, state, x), "compact": lambda: forward(small, small_state, x)},
                          args.reps)
        # identical static structure: compiled to the same program as the dense model at that width
        same = eqx.tree_equal(eqx.filter(small, eqx.is_array, inverse=True), eqx.filter(fresh, eqx.is_array, inverse=True))
        print(f"{s:>9.0%}{'/'.join(map(str, widths)):>14}{1e3 * t_masked['masked']:>11.3f}{1e3 * t['compact']:>12.3f}"
              f"{1e3 * t['fresh']:>19.3f}{t['compact'] / t['fresh']:>24.3f}"
              f"{t_masked['masked'] / t_masked['compact']:>16.3f}{str(bool(same)):>14}")


if __name__ == "__main__":
    main()

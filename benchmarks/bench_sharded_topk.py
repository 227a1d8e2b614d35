"""Global top-k pruning of a large model sharded over a device mesh against the same model on one
device, side by side in one process (8 simulated CPU devices by default: `--devices`).

The model is a stack of `--layers` square `eqx.nn.Linear` weights of `--width` (default: 6 of
4096×4096, 100.7M weights); `GlobalMagnitudePruning(sparsity=0.9).prune` runs jitted on the
unsharded model (one device) and on the model sharded row-wise over all devices with `bx.shard`.
Prints the fastest time of each over `--reps` rounds, their ratio, and whether the masks agree.

    python benchmarks/bench_sharded_topk.py [--devices 8] [--width 4096] [--layers 6] [--reps 3]
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    import jax

    try:
        jax.config.update("jax_num_cpu_devices", args.devices)  # simulated CPU devices, before the backend starts
    except RuntimeError:
        pass  # the backend already runs: use the devices it has
    import equinox as eqx
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import bmr_eqx as bx

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from common import timeit

    devices = jax.devices()[: args.devices]
    mesh = Mesh(np.array(devices), ("model",))
    keys = jax.random.split(jax.random.key(0), args.layers)
    model = [eqx.nn.Linear(args.width, args.width, use_bias=False, key=k) for k in keys]
    n = sum(lin.weight.size for lin in model)
    print(f"backend {jax.default_backend()} | {len(devices)} x {devices[0].device_kind} | jax {jax.__version__} | "
          f"{args.layers} x {args.width}x{args.width} = {n / 1e6:.1f}M weights | global top-k at {args.sparsity:.0%}")
    pruner = bx.GlobalMagnitudePruning(sparsity=args.sparsity)
    one = bx.Sparse(model)
    sharded = bx.shard(bx.Sparse(model), lambda path, leaf: NamedSharding(mesh, P("model", None)))
    prune = eqx.filter_jit(lambda m: pruner.prune(m).masks)
    t = timeit({"one device": lambda: prune(one), "sharded": lambda: prune(sharded)}, args.reps)
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(prune(one)), jax.tree.leaves(prune(sharded))))
    print(f"{'one device ms':>14}{'sharded ms':>12}{'sharded/one':>13}  masks equal")
    print(f"{1e3 * t['one device']:>14.1f}{1e3 * t['sharded']:>12.1f}{t['sharded'] / t['one device']:>13.3f}  {same}")


if __name__ == "__main__":
    main()

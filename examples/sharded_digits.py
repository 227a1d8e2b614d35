"""Train and prune an MLP on scikit-learn's digits on a device mesh, and check it against one device.

The batch is split over a "data" axis and every weight matrix (with its mask) over a "model" axis;
gradual magnitude pruning to the target sparsity runs inside the jitted step. On a CPU the mesh is
simulated (`--devices`, default 8). The same model is then trained on one device: the two runs give
the same losses and masks, up to the order of float reductions.

    python examples/sharded_digits.py [--devices 8] [--steps 600] [--sparsity 0.9]
"""

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(__file__))
from digits_data import load_digits_split  # noqa: E402

import bmr_eqx as bx  # noqa: E402


def _ask_for_devices(n: int) -> None:
    try:  # must happen before anything runs on the CPU backend
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # the backend already runs (e.g. imported by a test): use the devices it has


def make_mesh(devices: list) -> Mesh:
    model_axis = 2 if len(devices) % 2 == 0 else 1
    return Mesh(np.array(devices).reshape(len(devices) // model_axis, model_axis), ("data", "model"))


def train(mesh: Mesh | None, data, *, steps: int, sparsity: float, batch_size: int = 64, seed: int = 0):
    """Train `Sparse(MLP)` (on `mesh`, or one device if None); returns the model, losses, seconds."""
    x_tr, y_tr, x_te, y_te = data

    def rule(path, leaf):
        if leaf.ndim == 2 and leaf.shape[0] % mesh.shape["model"] == 0:
            return NamedSharding(mesh, P("model", None))
        return NamedSharding(mesh, P())

    place = (lambda m: m) if mesh is None else (lambda m: bx.shard(m, rule))
    model = place(bx.Sparse(eqx.nn.MLP(64, 10, 256, 2, activation=jax.nn.relu, key=jax.random.key(seed))))
    opt = bx.masked_updates(optax.adam(2e-3))
    pruner = bx.MagnitudePruning(sparsity=sparsity, schedule=bx.PolynomialSchedule(every=20, start=steps // 10,
                                                                                  end=steps // 2))
    state = opt.init(model)

    @eqx.filter_jit
    def step(model, state, x, y, i):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, model)
        return place(pruner.update(eqx.apply_updates(model, updates), i)), state, loss

    rng = np.random.default_rng(seed)
    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        idx = rng.integers(0, x_tr.shape[0], batch_size)
        x, y = x_tr[idx], y_tr[idx]
        if mesh is not None:
            x, y = jax.device_put((x, y), NamedSharding(mesh, P("data")))
        model, state, loss = step(model, state, x, y, jnp.asarray(i))
        losses.append(loss)
    losses = [float(v) for v in losses]
    return model, losses, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (a GPU host uses its own)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args(argv)
    _ask_for_devices(args.devices)  # only the CPU backend reads it; a GPU host uses its own devices
    data = load_digits_split()
    devices = jax.devices()
    mesh = make_mesh(devices)
    print(f"{len(devices)} {devices[0].platform} devices, mesh {dict(mesh.shape)}")

    sharded, losses_mesh, secs_mesh = train(mesh, data, steps=args.steps, sparsity=args.sparsity)
    single, losses_one, secs_one = train(None, data, steps=args.steps, sparsity=args.sparsity)
    x_te, y_te = data[2], data[3]
    acc = {name: float(jnp.mean(jnp.argmax(jax.vmap(m)(x_te), -1) == y_te)) for name, m in
           (("mesh", sharded), ("one device", single))}
    agree = float(np.mean([jnp.mean(sharded.masks[p] == single.masks[p]) for p in single.masks]))
    w = sharded.model.layers[0].weight
    print(f"{'':12s}{'accuracy':>10s}{'sparsity':>10s}{'final loss':>12s}{'seconds':>9s}")
    for name, m, losses, secs in (("mesh", sharded, losses_mesh, secs_mesh), ("one device", single, losses_one, secs_one)):
        print(f"{name:12s}{acc[name]:10.3f}{float(bx.sparsity_summary(m)['total']):10.3f}{losses[-1]:12.4f}{secs:9.1f}")
    print(f"masks agree on {agree:.2%} of the weights; layers[0] weight and mask sharded as "
          f"{w.sharding.spec} / {sharded.masks['layers[0].weight'].sharding.spec}")
    return {"accuracy": acc, "mask agreement": agree, "devices": len(devices),
            "max loss difference": float(np.max(np.abs(np.array(losses_mesh) - np.array(losses_one)))),
            "sparsity": float(bx.sparsity_summary(sharded)["total"])}


if __name__ == "__main__":
    main()

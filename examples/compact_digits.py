"""The evidence picks the width, `compact` makes the model that small: a CNN with BatchNorm on digits.

1. Trace the CNN once (`bx.dependency_groups`): each convolution's filters are coupled with their
   bias, the BatchNorm scale, shift and running statistics, and the next layer's input channels.
2. Train it with IVON: dense; with gradual channel pruning along those groups to `--sparsity` of
   every group's channels, ranked by magnitude (the L1 norm of all the channel's weights) and by
   BMR (the joint ΔF of removing all of them); and with structured adaptive BMR
   (`bx.AdaptiveBMR(sparsity_type=bx.Coupled(groups))`: a channel goes when removing it from every
   layer that carries it raises the evidence by more than `--threshold` nats; no target width).
3. `bx.compact` turns each pruned model (and its BatchNorm state) into a smaller dense CNN.

Prints, per method: the compacted model's channels, parameters and test accuracy (equal to the
masked model's: the outputs are checked), and the latency of one jitted forward pass over the test
set (median of `--reps`) of the masked model, the compacted model and a dense CNN built directly at
the compacted width.

    python examples/compact_digits.py [--steps 1500] [--seed 0] [--sparsity 0.75] [--threshold 2] [--reps 50]
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
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(__file__))
from digits_data import load_digits_split  # noqa: E402

import bmr_eqx as bx  # noqa: E402

HP = dict(learning_rate=0.5, b2=0.9998, weight_decay=1e-3, hess_init=0.1, batch_size=64)


class BNCNN(eqx.Module):
    """Conv(1→c1, 3x3) → BatchNorm → relu → Conv(c1→c2, 3x3, stride 2) → relu → mean-pool →
    Linear(c2→10), on 8x8 digits. Stateful: build with `eqx.nn.make_with_state`."""

    conv1: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key, c1=32, c2=64):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, c1, 3, padding=1, key=k1)
        self.bn = eqx.nn.BatchNorm(c1, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=k2)
        self.head = eqx.nn.Linear(c2, 10, key=k3)

    def __call__(self, x, state):
        h, state = self.bn(self.conv1(x), state)
        h = jax.nn.relu(self.conv2(jax.nn.relu(h)))
        return self.head(jnp.mean(h, axis=(1, 2))), state


def loss_fn(model, state, x, y):
    logits, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


def predict(model, state, x):
    """Logits of the model in inference mode (BatchNorm reads its running statistics)."""
    return jax.vmap(eqx.nn.inference_mode(model), in_axes=(0, None))(x, state)[0]


def train(pruner, data, steps, seed):
    """An IVON-trained `Posterior(Sparse(BNCNN))` pruned by `pruner`, and its BatchNorm state."""
    x_tr, y_tr, _, _ = data
    model, state = eqx.nn.make_with_state(BNCNN)(jax.random.key(seed))
    post = bx.Posterior(bx.Sparse(model), ess=x_tr.shape[0], weight_decay=HP["weight_decay"], hess_init=HP["hess_init"])
    opt = bx.ivon(optax.cosine_decay_schedule(HP["learning_rate"], steps), b2=HP["b2"])
    value_and_grad = bx.noisy_value_and_grad(loss_fn, has_aux=True)
    opt_state = opt.init(post)

    @eqx.filter_jit
    def step(post, opt_state, state, i, key):
        k_batch, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_batch, (HP["batch_size"],), 0, x_tr.shape[0])
        (_, state), grads, hess = value_and_grad(post, k_noise, state, x_tr[idx], y_tr[idx])
        updates, opt_state = opt.update(grads, opt_state, post, hess_estimate=hess)
        return pruner.update(eqx.apply_updates(post, updates), i), opt_state, state

    keys = jax.random.split(jax.random.key(seed + 1), steps)
    for i in tqdm(range(steps), desc=type(pruner).__name__, leave=False, mininterval=1.0):
        post, opt_state, state = step(post, opt_state, state, jnp.asarray(i), keys[i])
    return post, state


def latency_ms(model, state, x, reps):
    """Median wall time of one jitted forward pass of `model` over `x`."""
    fn = eqx.filter_jit(predict)
    jax.block_until_ready(fn(model, state, x))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(model, state, x))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.75, help="channel sparsity of the targeted pruners")
    parser.add_argument("--threshold", type=float, default=2.0, help="adaptive BMR prunes a channel iff its ΔF > T")
    parser.add_argument("--reps", type=int, default=50, help="timed forward passes per model")
    args = parser.parse_args(argv)

    x_tr, y_tr, x_te, y_te = load_digits_split()
    data = (x_tr.reshape(-1, 1, 8, 8), y_tr, x_te.reshape(-1, 1, 8, 8), y_te)
    model, state = eqx.nn.make_with_state(BNCNN)(jax.random.key(args.seed))
    groups = bx.dependency_groups(model, data[0][0], state)
    print("coupled groups:")
    for g in groups:
        print(f"  {g.size} channels: " + ", ".join(f"{m.path}[axis {m.axis}]" for m in g.members))

    coupled = bx.Coupled(groups)
    gradual = bx.PolynomialSchedule(start=int(0.1 * args.steps), end=int(0.6 * args.steps), every=max(1, args.steps // 40))
    periodic = bx.PeriodicSchedule(every=max(1, args.steps // 30), start=int(0.3 * args.steps), end=int(0.8 * args.steps))
    methods = {
        "dense (IVON)": bx.NoPruning(),
        f"magnitude {args.sparsity:.0%}": bx.MagnitudePruning(sparsity=args.sparsity, sparsity_type=coupled, schedule=gradual),
        f"BMR {args.sparsity:.0%}": bx.BMRPruning(sparsity=args.sparsity, sparsity_type=coupled, schedule=gradual),
        f"adaptive BMR (T={args.threshold:g})": bx.AdaptiveBMR(threshold=args.threshold, sparsity_type=coupled,
                                                              schedule=periodic),
    }
    x_te_img = data[2]

    def accuracy(m, s):
        return float(jnp.mean(jnp.argmax(predict(m, s, x_te_img), -1) == data[3]))

    def params(m):
        return sum(x.size for x in jax.tree.leaves(eqx.filter(m, eqx.is_array)))

    print(f"\n{'method':<24}{'channels':>10}{'params':>8}{'accuracy':>10}{'masked ms':>11}{'compacted ms':>14}"
          f"{'dense-at-width ms':>19}    (test set: {x_te_img.shape[0]} images; latency: one jitted forward pass,"
          f" median of {args.reps})")
    for name, pruner in methods.items():
        post, bn_state = train(pruner, data, args.steps, args.seed)
        masked = post.mean.masked()
        small, small_state = bx.compact(post, data[0][0], bn_state)
        np.testing.assert_allclose(predict(small, small_state, x_te_img), predict(masked, bn_state, x_te_img),
                                   rtol=1e-3, atol=1e-3)  # compact already checked one example; now all
        width = (small.conv1.out_channels, small.conv2.out_channels)
        fresh, fresh_state = eqx.nn.make_with_state(BNCNN)(jax.random.key(123), *width)
        print(f"{name:<24}{'/'.join(map(str, width)):>10}{params(small):>8}{accuracy(small, small_state):>10.4f}"
              f"{latency_ms(masked, bn_state, x_te_img, args.reps):>11.3f}"
              f"{latency_ms(small, small_state, x_te_img, args.reps):>14.3f}"
              f"{latency_ms(fresh, fresh_state, x_te_img, args.reps):>19.3f}")
    print("\nchannels and params: of the compacted model; its accuracy equals the masked model's (outputs checked)")


if __name__ == "__main__":
    main()

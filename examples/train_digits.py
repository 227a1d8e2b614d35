"""Gradual magnitude pruning of an MLP on scikit-learn's digits, to 90% sparsity.

Trains a dense baseline and a pruned model with the same code path (the dense one uses
`NoPruning`), prints a per-layer table, and writes a plot of accuracy and sparsity against step.

    python examples/train_digits.py [--steps 1500] [--sparsity 0.9] [--out outputs]
"""

import argparse
import os
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(__file__))
from digits_data import load_digits_split  # noqa: E402

import bmr_eqx as bx  # noqa: E402


def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(jax.vmap(model)(x), -1) == y)


def train(pruner, data, *, steps, batch_size=64, seed=0, eval_every=50, label=""):
    """Train `Sparse(MLP)` with adamw + `pruner`; returns the model and its history."""
    x_tr, y_tr, x_te, y_te = data
    key_model, key_data = jax.random.split(jax.random.key(seed))
    model = bx.Sparse(eqx.nn.MLP(64, 10, 256, 2, activation=jax.nn.relu, key=key_model))
    opt = bx.masked_updates(optax.adamw(2e-3, weight_decay=1e-4))
    state = opt.init(model)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()

    @eqx.filter_jit
    def step(model, state, step, key):
        idx = jax.random.randint(key, (batch_size,), 0, x_tr.shape[0])
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x_tr[idx], y_tr[idx])
        updates, state = opt.update(grads, state, model)
        model = eqx.apply_updates(model, updates)
        model = pruner.update(model, step, grads=grads)
        return model, state, loss

    evaluate = eqx.filter_jit(lambda m: (accuracy(m, x_te, y_te), bx.sparsity_summary(m)["total"]))
    history = {"step": [], "accuracy": [], "sparsity": []}
    keys = jax.random.split(key_data, steps)
    bar = tqdm(range(steps), desc=label, leave=True)
    for i in bar:
        model, state, loss = step(model, state, jnp.asarray(i), keys[i])
        if i % eval_every == 0 or i == steps - 1:
            acc, sparsity = evaluate(model)
            history["step"].append(i)
            history["accuracy"].append(float(acc))
            history["sparsity"].append(float(sparsity))
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(acc):.3f}", sparsity=f"{float(sparsity):.2f}")
    return model, history


def plot(histories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, h in histories.items():
        ax.plot(h["step"], h["accuracy"], label=f"{label} accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    for label, h in histories.items():
        ax2.plot(h["step"], h["sparsity"], "--", label=f"{label} sparsity")
    ax2.set_ylabel("sparsity")
    ax2.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
    ax.set_title("Digits MLP: gradual magnitude pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = load_digits_split(seed=args.seed)
    end = int(0.7 * args.steps)
    pruner = bx.MagnitudePruning(
        sparsity=args.sparsity,
        distribution="erk",
        schedule=bx.PolynomialSchedule(start=int(0.1 * args.steps), end=end, every=max(1, args.steps // 50)),
    )
    dense, h_dense = train(bx.NoPruning(), data, steps=args.steps, seed=args.seed, label="dense ")
    sparse, h_sparse = train(pruner, data, steps=args.steps, seed=args.seed, label="pruned")

    x_te, y_te = data[2], data[3]
    acc_dense, acc_sparse = float(accuracy(dense, x_te, y_te)), float(accuracy(sparse, x_te, y_te))
    summary = bx.sparsity_summary(sparse)
    print(f"\n{'leaf':<22}{'shape':>12}{'sparsity':>10}")
    for path, mask in sparse.masks.items():  # masks: {leaf path: bool array of the leaf's shape}
        print(f"{path:<22}{tuple(mask.shape)!s:>12}{float(summary[path]):>10.3f}")
    print(f"{'total':<22}{'':>12}{float(summary['total']):>10.3f}")
    print(f"\ntest accuracy: dense {acc_dense:.4f}   pruned {acc_sparse:.4f}   (difference {acc_sparse - acc_dense:+.4f})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "train_digits.png")
    plot({"dense": h_dense, "pruned": h_sparse}, path)
    print(f"plot: {path}   time: {time.perf_counter() - t0:.1f} s")
    return {"dense": acc_dense, "pruned": acc_sparse, "sparsity": float(summary["total"])}


if __name__ == "__main__":
    main()

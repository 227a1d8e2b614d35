"""Bayesian model reduction on scikit-learn's digits: IVON-trained MLPs pruned by the evidence.

Trains the same MLP with IVON five ways, over several seeds, and compares them at the same final
sparsity (adaptive BMR finds its own):

* dense IVON (no pruning);
* gradual magnitude pruning of the posterior mean (|μ|);
* gradual BMR (rank by ΔF per layer);
* global BMR (one ranking of ΔF over all layers);
* adaptive BMR (no target: prune where ΔF > T; T = 2 nats, "positive evidence", by default).

Prints a table of sparsity, accuracy, NLL and ECE of the posterior predictive (mean ± std over
seeds) and writes a plot.

    python examples/bmr_digits.py [--steps 2000] [--seeds 3] [--sparsity 0.9] [--adaptive-threshold 2] [--out outputs]
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

HPARAMS = dict(learning_rate=0.2, b2=0.9998, weight_decay=1e-3, hess_init=0.1, batch_size=64, width=256, pred_samples=32)


class DigitsCNN(eqx.Module):
    """Conv(1→16, 3x3) → relu → Conv(16→32, 3x3) → relu → mean-pool → Linear(32→10), on 8x8 digits
    given flat (64,) like the MLP's input."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, padding=1, key=k2)
        self.head = eqx.nn.Linear(32, 10, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x.reshape(1, 8, 8)))))
        return self.head(jnp.mean(h, axis=(1, 2)))


def make_model(arch, key, hp=HPARAMS):
    """The digits classifier: `"mlp"` (64-256-256-10, relu) or `"cnn"` (`DigitsCNN`)."""
    if arch == "cnn":
        return DigitsCNN(key)
    return eqx.nn.MLP(64, 10, hp["width"], 2, activation=jax.nn.relu, key=key)


def methods(sparsity: float, steps: int, adaptive_threshold: float = 2.0, curvature: str = "posterior") -> dict:
    gradual = bx.PolynomialSchedule(start=int(0.1 * steps), end=int(0.6 * steps), every=max(1, steps // 40))
    return {
        "dense IVON": bx.NoPruning(),
        "magnitude": bx.MagnitudePruning(sparsity=sparsity, schedule=gradual),
        "BMR": bx.BMRPruning(sparsity=sparsity, schedule=gradual, curvature=curvature),
        "global BMR": bx.GlobalBMRPruning(sparsity=sparsity, schedule=gradual, curvature=curvature),
        "adaptive BMR": bx.AdaptiveBMR(
            threshold=adaptive_threshold, curvature=curvature,
            schedule=bx.PeriodicSchedule(every=max(1, steps // 40), start=int(0.3 * steps), end=int(0.8 * steps)),
        ),
    }


def train(pruner, data, *, steps, seed, hp=HPARAMS, label="", arch="mlp"):
    """Train `Posterior(Sparse(model))` with IVON and `pruner`; returns the posterior and its history."""
    x_tr, y_tr, x_te, y_te = data
    key_model, key_run = jax.random.split(jax.random.key(seed))
    model = make_model(arch, key_model, hp)
    post = bx.Posterior(bx.Sparse(model), ess=x_tr.shape[0], weight_decay=hp["weight_decay"], hess_init=hp["hess_init"])
    opt = bx.ivon(optax.cosine_decay_schedule(hp["learning_rate"], steps), b2=hp["b2"])
    state = opt.init(post)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()

    value_and_grad = bx.noisy_value_and_grad(loss_fn)

    @eqx.filter_jit
    def step(post, state, step, key):
        k_batch, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_batch, (hp["batch_size"],), 0, x_tr.shape[0])
        loss, grads, hess_estimate = value_and_grad(post, k_noise, x_tr[idx], y_tr[idx])
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        post = eqx.apply_updates(post, updates)
        return pruner.update(post, step), state, loss

    @eqx.filter_jit
    def evaluate(post, key):
        probs = post.predict(lambda m: jax.nn.softmax(jax.vmap(m)(x_te)), key, hp["pred_samples"])
        return bx.classification_metrics(probs, y_te, num_bins=10), bx.sparsity_summary(post)["total"]

    history = {"step": [], "accuracy": [], "sparsity": []}
    keys = jax.random.split(key_run, steps + 1)
    for i in tqdm(range(steps), desc=label, leave=False, mininterval=1.0):
        post, state, loss = step(post, state, jnp.asarray(i), keys[i])
        if i % max(1, steps // 40) == 0 or i == steps - 1:
            metrics, sparsity = evaluate(post, keys[-1])
            history["step"].append(i)
            history["accuracy"].append(float(metrics["accuracy"]))
            history["sparsity"].append(float(sparsity))
    metrics, sparsity = evaluate(post, keys[-1])
    final = {k: float(v) for k, v in metrics.items()} | {"sparsity": float(sparsity)}
    return post, history, final


def plot(histories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, h in histories.items():
        ax1.plot(h["step"], h["accuracy"], label=label)
        ax2.plot(h["step"], h["sparsity"], label=label)
    ax1.set(xlabel="step", ylabel="test accuracy (posterior predictive)", ylim=(0.8, 1.0), title="accuracy")
    ax2.set(xlabel="step", ylabel="sparsity", ylim=(0, 1), title="sparsity")
    ax1.legend(loc="lower right")
    fig.suptitle("Digits MLP trained with IVON: magnitude vs Bayesian model reduction (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--adaptive-threshold", type=float, default=2.0, help="T of adaptive BMR (prune iff ΔF > T)")
    parser.add_argument("--curvature", choices=["posterior", "data"], default="posterior",
                        help="the curvature the BMR methods read (see the docs' Bayesian pruners page)")
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = load_digits_split(seed=0)
    results = {name: [] for name in methods(args.sparsity, args.steps)}
    histories = {}
    for seed in range(args.seeds):
        for name, pruner in methods(args.sparsity, args.steps, args.adaptive_threshold, args.curvature).items():
            _, history, final = train(pruner, data, steps=args.steps, seed=seed, label=f"{name} seed {seed}")
            results[name].append(final)
            if seed == 0:
                histories[name] = history
            print(f"seed {seed}  {name:<13} " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)

    cols = ("sparsity", "accuracy", "nll", "ece")
    print(f"\n{'method':<14}" + "".join(f"{c:>18}" for c in cols) + f"    ({args.seeds} seeds, mean ± std)")
    summary = {}
    for name, runs in results.items():
        row = {c: (np.mean([r[c] for r in runs]), np.std([r[c] for r in runs])) for c in cols}
        summary[name] = row
        print(f"{name:<14}" + "".join(f"{row[c][0]:>11.4f} ± {row[c][1]:.3f}" for c in cols))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bmr_digits.png")
    plot(histories, path)
    print(f"plot: {path}   time: {time.perf_counter() - t0:.1f} s")
    return summary


if __name__ == "__main__":
    main()

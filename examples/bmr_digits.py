"""Bayesian model reduction on scikit-learn's digits: IVON-trained MLPs pruned by the evidence.

Trains the same MLP (or `--arch cnn`) with IVON, over several seeds, and compares at each target
sparsity (adaptive BMR finds its own):

* dense IVON (no pruning);
* gradual magnitude pruning of the posterior mean (|μ|), per layer and global (raw |μ|);
* gradual BMR (rank by ΔF per layer) and global BMR (one ranking of ΔF over all layers);
* adaptive BMR (no target: prune where ΔF > T; T = 2 nats, "positive evidence", by default).

Prints a table of sparsity, accuracy, NLL and ECE of the posterior predictive (mean ± std over
seeds) with each method's paired (same seed) difference to magnitude pruning (global BMR: to global
|μ|) at the same target, and writes a plot.

    python examples/bmr_digits.py [--steps 2000] [--seeds 3] [--sparsity 0.9 [0.98 ...]] [--arch mlp|cnn]
                                  [--curvature posterior|data] [--adaptive-threshold 2] [--eval-every N]
                                  [--out outputs]
"""

import argparse
import functools
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

HPARAMS = {
    "mlp": dict(learning_rate=0.2, b2=0.9998, weight_decay=1e-3, hess_init=0.1, batch_size=64, width=256, pred_samples=32),
    "cnn": dict(learning_rate=0.5, b2=0.9998, weight_decay=1e-3, hess_init=0.1, batch_size=64, pred_samples=32),
}


class DigitsCNN(eqx.Module):
    """Conv(1→16, 3x3) → relu → Conv(16→32, 3x3, stride 2) → relu → flatten → Linear(512→10), on 8x8
    digits given flat (64,) like the MLP's input (9,930 parameters)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, stride=2, padding=1, key=k2)
        self.head = eqx.nn.Linear(32 * 4 * 4, 10, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x.reshape(1, 8, 8)))))
        return self.head(h.reshape(-1))


def make_model(arch, key):
    """The digits classifier: `"mlp"` (64-256-256-10, relu) or `"cnn"` (`DigitsCNN`)."""
    if arch == "cnn":
        return DigitsCNN(key)
    return eqx.nn.MLP(64, 10, HPARAMS["mlp"]["width"], 2, activation=jax.nn.relu, key=key)


def gradual_methods(sparsity: float, steps: int, curvature: str = "posterior") -> dict:
    """The pruners compared at one target sparsity, pruning gradually from 10% to 60% of training."""
    gradual = bx.PolynomialSchedule(start=int(0.1 * steps), end=int(0.6 * steps), every=max(1, steps // 40))
    return {
        "magnitude": bx.MagnitudePruning(sparsity=sparsity, schedule=gradual),
        "BMR": bx.BMRPruning(sparsity=sparsity, schedule=gradual, curvature=curvature),
        "global |μ|": bx.GlobalMagnitudePruning(sparsity=sparsity, schedule=gradual),
        "global BMR": bx.GlobalBMRPruning(sparsity=sparsity, schedule=gradual, curvature=curvature),
    }


def untargeted_methods(steps: int, adaptive_threshold: float = 2.0, curvature: str = "posterior") -> dict:
    """The runs with no target sparsity: dense IVON, and adaptive BMR (the evidence decides)."""
    return {
        "dense IVON": bx.NoPruning(),
        "adaptive BMR": bx.AdaptiveBMR(
            threshold=adaptive_threshold, curvature=curvature,
            schedule=bx.PeriodicSchedule(every=max(1, steps // 40), start=int(0.3 * steps), end=int(0.8 * steps)),
        ),
    }


def baseline_of(name: str) -> str:
    """What a method is paired with at the same sparsity: global rankings with global |μ|, the rest
    (and global |μ| itself) with per-layer magnitude."""
    return "global |μ|" if name.startswith("global") and name != "global |μ|" else "magnitude"


def report(results: dict, seeds: int) -> dict:
    """Print `results[(method, target sparsity or None)] = [metrics per seed]` as a table: mean ± std
    over seeds of sparsity, accuracy, NLL and ECE, and the paired (same seed) difference of each to
    the method's baseline at the same target sparsity (`baseline_of`). Returns the same figures."""
    cols = ("accuracy", "nll", "ece")
    print(f"\n{'method':<28}{'target':>7}{'sparsity':>9}" + "".join(f"{c:>16}{'Δ ' + c:>18}" for c in cols)
          + f"    ({seeds} seeds: mean ± std; Δ paired by seed against {{magnitude, global |μ|}})")
    summary = {}
    for (name, target), runs in results.items():
        base = results.get((baseline_of(name), target)) if target is not None else None
        row = {"sparsity": (np.mean([r["sparsity"] for r in runs]), np.std([r["sparsity"] for r in runs]))}
        line = f"{name:<28}{'' if target is None else f'{target:.2f}':>7}{row['sparsity'][0]:>9.3f}"
        for c in cols:
            values = np.array([r[c] for r in runs])
            row[c] = (values.mean(), values.std())
            line += f"{values.mean():>9.4f} ± {values.std():.3f}"
            if base is None or baseline_of(name) == name:
                line += " " * 18
            else:
                diff = values - np.array([r[c] for r in base])
                row["Δ " + c] = (diff.mean(), diff.std())
                line += f"{diff.mean():>+10.4f} ± {diff.std():.3f}"
        summary[(name, target)] = row
        print(line)
    return summary


def _loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


@functools.cache
def step_functions(arch: str, steps: int):
    """`(optimizer, step, evaluate)` for one architecture and run length, built once: the jitted
    functions take the pruner and the data as arguments, so every seed (and every pruner of the same
    configuration) reuses one compilation instead of compiling afresh."""
    hp = HPARAMS[arch]
    opt = bx.ivon(optax.cosine_decay_schedule(hp["learning_rate"], steps), b2=hp["b2"])
    value_and_grad = bx.noisy_value_and_grad(_loss_fn)

    @eqx.filter_jit
    def step(post, state, i, key, pruner, x_tr, y_tr):
        k_batch, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_batch, (hp["batch_size"],), 0, x_tr.shape[0])
        loss, grads, hess_estimate = value_and_grad(post, k_noise, x_tr[idx], y_tr[idx])
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        post = eqx.apply_updates(post, updates)
        return pruner.update(post, i), state, loss

    @eqx.filter_jit
    def evaluate(post, key, x_te, y_te):
        probs = post.predict(lambda m: jax.nn.softmax(jax.vmap(m)(x_te)), key, hp["pred_samples"])
        return bx.classification_metrics(probs, y_te, num_bins=10), bx.sparsity_summary(post)["total"]

    return opt, step, evaluate


def train(pruner, data, *, steps, seed, label="", arch="mlp", eval_every=None):
    """Train `Posterior(Sparse(model))` with IVON and `pruner`; returns the posterior, its history
    (evaluated every `eval_every` steps, by default `steps // 40`) and the final test metrics."""
    hp = HPARAMS[arch]
    eval_every = eval_every or max(1, steps // 40)
    x_tr, y_tr, x_te, y_te = data
    key_model, key_run = jax.random.split(jax.random.key(seed))
    model = make_model(arch, key_model)
    post = bx.Posterior(bx.Sparse(model), ess=x_tr.shape[0], weight_decay=hp["weight_decay"], hess_init=hp["hess_init"])
    opt, step_fn, evaluate_fn = step_functions(arch, steps)
    state = opt.init(post)

    def step(post, state, i, key):
        return step_fn(post, state, i, key, pruner, x_tr, y_tr)

    def evaluate(post, key):
        return evaluate_fn(post, key, x_te, y_te)

    history = {"step": [], "accuracy": [], "sparsity": []}
    keys = jax.random.split(key_run, steps + 1)
    for i in tqdm(range(steps), desc=label, leave=False, mininterval=1.0):
        post, state, loss = step(post, state, jnp.asarray(i), keys[i])
        if i % eval_every == 0 or i == steps - 1:
            metrics, sparsity = evaluate(post, keys[-1])
            history["step"].append(i)
            history["accuracy"].append(float(metrics["accuracy"]))
            history["sparsity"].append(float(sparsity))
    metrics, sparsity = evaluate(post, keys[-1])
    final = {k: float(v) for k, v in metrics.items()} | {"sparsity": float(sparsity)}
    return post, history, final


def plot(histories, targets, path, arch):
    """One accuracy panel per target sparsity (with dense and adaptive BMR in each) and one panel of
    sparsity over training, for seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(5 * (len(targets) + 1), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for (name, t), h in histories.items():
            if t in (target, None):
                ax.plot(h["step"], h["accuracy"], label=name)
        ax.set(xlabel="step", ylabel="test accuracy (posterior predictive)", ylim=(0.5, 1.0),
               title=f"target sparsity {target:.0%}")
        ax.legend(loc="lower right")
    for (name, t), h in histories.items():
        axes[0, -1].plot(h["step"], h["sparsity"], label=name if t is None else f"{name} @ {t:.0%}")
    axes[0, -1].set(xlabel="step", ylabel="sparsity", ylim=(0, 1), title="sparsity")
    fig.suptitle(f"Digits {arch.upper()} trained with IVON: magnitude vs Bayesian model reduction (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9], help="target sparsities")
    parser.add_argument("--adaptive-threshold", type=float, default=2.0, help="T of adaptive BMR (prune iff ΔF > T)")
    parser.add_argument("--curvature", choices=["posterior", "data"], default="posterior",
                        help="the curvature the BMR methods read (see the docs' Bayesian pruners page)")
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp", help="the digits classifier")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between the test evaluations plotted (default: steps // 40)")
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = load_digits_split(seed=0)
    runs = [(name, None, p) for name, p in untargeted_methods(args.steps, args.adaptive_threshold, args.curvature).items()]
    runs += [(name, s, p) for s in args.sparsity for name, p in gradual_methods(s, args.steps, args.curvature).items()]
    results, histories = {}, {}
    for seed in range(args.seeds):
        for name, target, pruner in runs:
            label = name if target is None else f"{name} @ {target:.2f}"
            _, history, final = train(pruner, data, steps=args.steps, seed=seed, label=f"{label} seed {seed}",
                                      arch=args.arch, eval_every=args.eval_every)
            results.setdefault((name, target), []).append(final)
            if seed == 0:
                histories[(name, target)] = history
            print(f"seed {seed}  {label:<22} " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
    summary = report(results, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bmr_digits{'_cnn' if args.arch == 'cnn' else ''}.png")
    plot(histories, args.sparsity, path, args.arch)
    print(f"plot: {path}   time: {time.perf_counter() - t0:.1f} s")
    return summary


if __name__ == "__main__":
    main()

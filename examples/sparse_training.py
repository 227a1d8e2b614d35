"""Sparse training on scikit-learn's digits: static, SET, RigL, gradual pruning and Bayesian drop-and-grow.

Trains the digits MLP (64-256-256-10, relu) at the same step budget, over several seeds, by:

* dense adam (no pruning);
* static sparse: a random 90%-sparse (ERK) mask drawn once and never changed;
* SET and RigL from the same random start: drop the smallest |w| and regrow at random (SET) or by
  the dense gradient (RigL) every `steps // 40` steps until 75% of training, at constant sparsity;
* gradual magnitude pruning from dense to 90% (ERK), from 10% to 75% of training;
* with IVON from the same random start: static sparse, RigL, and Bayesian drop-and-grow (drop the
  weights whose removal costs the least evidence, ΔF; regrow by the dense gradient), evaluated by
  the posterior predictive.

The adam runs use `masked_updates(adam)` with a cosine-decayed learning rate, the IVON runs the
hyper-parameters of `bmr_digits.HPARAMS["mlp"]` with a learning rate of 0.5; regrown weights get
fresh optimizer moments (`reset_regrown`). Prints a table of final sparsity, test accuracy and NLL
(mean ± std over seeds) with each method's paired (same seed) difference to static sparse with the
same optimizer, and plots test accuracy over training for seed 0.

    python examples/sparse_training.py [--steps 2000] [--seeds 3] [--out outputs]
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
from bmr_digits import HPARAMS, make_model  # noqa: E402
from digits_data import load_digits_split  # noqa: E402

import bmr_eqx as bx  # noqa: E402

SPARSITY = 0.9
ADAM_LR = 3e-3
IVON_LR = 0.5  # from a 90%-sparse start, IVON at bmr_digits' 0.2 stays near chance for ~500 steps
BASELINE = {"adam": "static sparse", "ivon": "static sparse (IVON)"}


def methods(steps: int) -> dict:
    """`{name: (pruner, start, optimizer)}`: `start` is `"dense"` or `"random"` (the shared random
    ERK mask of `StaticRandomSparse`), `optimizer` is `"adam"` or `"ivon"`."""
    every = max(1, steps // 40)
    periodic = bx.PeriodicSchedule(every=every, end=int(0.75 * steps))
    gradual = bx.PolynomialSchedule(start=int(0.1 * steps), end=int(0.75 * steps), every=every)
    static = bx.StaticRandomSparse(sparsity=SPARSITY, distribution="erk")  # masks fixed
    rigl = bx.RigL(sparsity=SPARSITY, distribution="erk", schedule=periodic)
    return {
        "dense": (bx.NoPruning(), "dense", "adam"),
        BASELINE["adam"]: (static, "random", "adam"),
        "SET": (bx.SET(sparsity=SPARSITY, distribution="erk", schedule=periodic), "random", "adam"),
        "RigL": (rigl, "random", "adam"),
        "gradual magnitude": (bx.MagnitudePruning(sparsity=SPARSITY, distribution="erk", schedule=gradual),
                              "dense", "adam"),
        BASELINE["ivon"]: (static, "random", "ivon"),
        "RigL (IVON)": (rigl, "random", "ivon"),
        "BMR drop-and-grow (IVON)": (bx.BMRDropAndGrow(sparsity=SPARSITY, distribution="erk", schedule=periodic),
                                     "random", "ivon"),
    }


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def dense_loss(model, x, y):
    """The loss with gradients passed straight through the masks (RigL and BMR grow by them)."""
    return loss_fn(bx.straight_through(model), x, y)


@functools.cache
def step_functions(optimizer: str, steps: int):
    """`(opt, step, evaluate)` for `"adam"` or `"ivon"` and a run length, built once: the jitted
    functions take the pruner and the data as arguments, so every seed reuses one compilation per
    method instead of compiling afresh."""
    hp = HPARAMS["mlp"]
    bayes = optimizer == "ivon"
    if bayes:
        opt = bx.ivon(optax.cosine_decay_schedule(IVON_LR, steps), b2=hp["b2"])
        value_and_grad = bx.noisy_value_and_grad(dense_loss)
    else:
        opt = bx.masked_updates(optax.adam(optax.cosine_decay_schedule(ADAM_LR, steps)))

    @eqx.filter_jit
    def step(model, opt_state, i, key, pruner, x_tr, y_tr):
        k_batch, k_noise, k_prune = jax.random.split(key, 3)
        idx = jax.random.randint(k_batch, (hp["batch_size"],), 0, x_tr.shape[0])
        if bayes:
            _, dense, hess = value_and_grad(model, k_noise, x_tr[idx], y_tr[idx])
            updates, opt_state = opt.update(bx.mask_gradients(dense, model), opt_state, model, hess_estimate=hess)
        else:
            _, dense = eqx.filter_value_and_grad(dense_loss)(model, x_tr[idx], y_tr[idx])
            updates, opt_state = opt.update(bx.mask_gradients(dense, model), opt_state, model)
        model = eqx.apply_updates(model, updates)
        new = pruner.update(model, i, grads=dense, key=k_prune)
        return new, bx.reset_regrown(opt_state, model, new)

    @eqx.filter_jit
    def evaluate(model, key, x_te, y_te):
        def probs_of(m):
            return jax.nn.softmax(jax.vmap(m)(x_te))

        probs = model.predict(probs_of, key, hp["pred_samples"]) if bayes else probs_of(model)
        return bx.classification_metrics(probs, y_te, num_bins=10), bx.sparsity_summary(model)["total"]

    return opt, step, evaluate


def train(pruner, start, optimizer, data, *, steps, seed, label=""):
    """Train `Sparse(mlp)` with masked adam, or `Posterior(Sparse(mlp))` with IVON, updating the masks
    with `pruner` after every step; returns the history and the final test metrics."""
    hp = HPARAMS["mlp"]
    x_tr, y_tr, x_te, y_te = data
    key_model, key_mask, key_run = jax.random.split(jax.random.key(seed), 3)
    model = bx.Sparse(make_model("mlp", key_model))
    if start == "random":  # the same start for every method of a seed
        model = bx.StaticRandomSparse(sparsity=SPARSITY, distribution="erk").prune(model, key=key_mask)
    if optimizer == "ivon":
        model = bx.Posterior(model, ess=x_tr.shape[0], weight_decay=hp["weight_decay"], hess_init=hp["hess_init"])
    opt, step_fn, evaluate_fn = step_functions(optimizer, steps)
    opt_state = opt.init(model)

    def step(model, opt_state, i, key):
        return step_fn(model, opt_state, i, key, pruner, x_tr, y_tr)

    def evaluate(model, key):
        return evaluate_fn(model, key, x_te, y_te)

    history = {"step": [], "accuracy": [], "sparsity": []}
    keys = jax.random.split(key_run, steps + 1)
    for i in tqdm(range(steps), desc=label, leave=False, mininterval=1.0):
        model, opt_state = step(model, opt_state, jnp.asarray(i), keys[i])
        if i % max(1, steps // 40) == 0 or i == steps - 1:
            metrics, sparsity = evaluate(model, keys[-1])
            history["step"].append(i)
            history["accuracy"].append(float(metrics["accuracy"]))
            history["sparsity"].append(float(sparsity))
    metrics, sparsity = evaluate(model, keys[-1])
    return history, {k: float(v) for k, v in metrics.items()} | {"sparsity": float(sparsity)}


def report(results: dict, seeds: int) -> dict:
    """Print `results[method] = [metrics per seed]` as a table: mean ± std over seeds of sparsity,
    accuracy and NLL, and the paired (same seed) difference of accuracy and NLL to static sparse
    with the same optimizer. Returns the same figures."""
    cols = ("accuracy", "nll")
    print(f"\n{'method':<26}{'sparsity':>9}" + "".join(f"{c:>16}{'Δ ' + c:>18}" for c in cols)
          + f"    ({seeds} seeds: mean ± std; Δ paired by seed against static sparse with the same optimizer)")
    summary = {}
    for name, runs in results.items():
        sparsity = np.array([r["sparsity"] for r in runs])
        row = {"sparsity": (sparsity.mean(), sparsity.std())}
        line = f"{name:<26}{sparsity.mean():>9.3f}"
        for c in cols:
            values = np.array([r[c] for r in runs])
            row[c] = (values.mean(), values.std())
            line += f"{values.mean():>9.4f} ± {values.std():.3f}"
            base = BASELINE["ivon" if "IVON" in name else "adam"]
            if name == base or base not in results:
                line += " " * 18
            else:
                diff = values - np.array([r[c] for r in results[base]])
                row["Δ " + c] = (diff.mean(), diff.std())
                line += f"{diff.mean():>+10.4f} ± {diff.std():.3f}"
        summary[name] = row
        print(line)
    return summary


def plot(histories, path):
    """Test accuracy over training, one line per method, and sparsity over training (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    for name, h in histories.items():
        ax.plot(h["step"], h["accuracy"], label=name)
        ax_s.plot(h["step"], h["sparsity"], label=name)
    ax.set(xlabel="step", ylabel="test accuracy", ylim=(0.5, 1.0), title="test accuracy")
    ax.legend(loc="lower right")
    ax_s.set(xlabel="step", ylabel="sparsity", ylim=(0, 1), title="sparsity")
    fig.suptitle(f"Digits MLP at {SPARSITY:.0%} sparsity (ERK): sparse training methods (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = load_digits_split(seed=0)
    results, histories = {}, {}
    for seed in range(args.seeds):
        for name, (pruner, start, optimizer) in methods(args.steps).items():
            history, final = train(pruner, start, optimizer, data, steps=args.steps, seed=seed,
                                   label=f"{name} seed {seed}")
            results.setdefault(name, []).append(final)
            if seed == 0:
                histories[name] = history
            print(f"seed {seed}  {name:<26} " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
    summary = report(results, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "sparse_training.png")
    plot(histories, path)
    print(f"plot: {path}   time: {time.perf_counter() - t0:.1f} s")
    return summary


if __name__ == "__main__":
    main()

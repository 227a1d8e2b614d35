"""One-shot pruning of IVON-trained digits MLPs at high sparsity: does the evidence beat magnitude?

Trains a dense IVON posterior per seed (the `bmr_digits.py` set-up), then prunes it once, at each
sparsity, with magnitude and BMR rankings, per layer and global, with IVON's own curvature (the
initial value removed) and with a curvature refreshed from the training data
(`bmr_eqx.refresh_curvature`). Every pruned mean is evaluated with the same predictive posterior
(IVON's σ), so only the choice of the kept weights differs. Prints accuracy, NLL and ECE (mean ±
std over seeds), each one's paired (same seed) difference to magnitude pruning at the same sparsity
(global BMR: to global raw |μ|), and the rank correlation of −ΔF with |μ| per layer.

    python examples/bmr_oneshot_study.py [--steps 2000] [--seeds 3] [--sparsities 0.95 0.98 0.99] [--arch cnn]
"""

import argparse
import os
import sys
import time
import warnings

import equinox as eqx
import jax
import numpy as np
import optax
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(__file__))
import bmr_digits  # noqa: E402
from digits_data import load_digits_split  # noqa: E402

import bmr_eqx as bx  # noqa: E402


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def pruners(sparsity):
    """name -> (pruner, which curvature it reads: 'ivon' or 'refreshed')."""
    return {
        "magnitude": (bx.MagnitudePruning(sparsity=sparsity), "ivon"),
        "BMR": (bx.BMRPruning(sparsity=sparsity), "ivon"),
        "BMR data h": (bx.BMRPruning(sparsity=sparsity, curvature="data"), "ivon"),
        "BMR refreshed": (bx.BMRPruning(sparsity=sparsity), "refreshed"),
        "SNR |μ|/σ refreshed": (bx.UncertaintyMagnitudePruning(sparsity=sparsity), "refreshed"),
        "global |μ|": (bx.GlobalMagnitudePruning(sparsity=sparsity, floor=0.0), "ivon"),
        "global |μ| floor": (bx.GlobalMagnitudePruning(sparsity=sparsity), "ivon"),
        "global |μ| normalised": (bx.GlobalMagnitudePruning(sparsity=sparsity, normalize=True, floor=0.0), "ivon"),
        "global BMR": (bx.GlobalBMRPruning(sparsity=sparsity, floor=0.0), "ivon"),
        "global BMR refreshed": (bx.GlobalBMRPruning(sparsity=sparsity, floor=0.0), "refreshed"),
        "global BMR refreshed floor": (bx.GlobalBMRPruning(sparsity=sparsity), "refreshed"),
    }


ADAPTIVE = {
    "adaptive BMR (ΔF > 0)": (bx.AdaptiveBMR(threshold=0.0), "ivon"),
    "adaptive BMR data h": (bx.AdaptiveBMR(threshold=0.0, curvature="data"), "ivon"),
    "adaptive BMR refreshed": (bx.AdaptiveBMR(threshold=0.0), "refreshed"),
}


@eqx.filter_jit
def evaluate(post, x, y, key, samples):
    probs = post.predict(lambda m: jax.nn.softmax(jax.vmap(m)(x)), key, samples)
    return bx.classification_metrics(probs, y, num_bins=10)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.95, 0.98, 0.99])
    parser.add_argument("--probes", type=int, default=8, help="Hutchinson probes per batch for the refresh")
    parser.add_argument("--refresh", choices=["hessian", "fisher"], default="fisher", help="refresh_curvature's method")
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp", help="the digits classifier")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="The posterior's curvature")  # the report below shows it
    t0 = time.perf_counter()
    data = load_digits_split(seed=0)
    x_tr, y_tr, x_te, y_te = data
    samples = bmr_digits.HPARAMS[args.arch]["pred_samples"]
    results = {}  # (method, sparsity) -> list of metric dicts (one per seed)
    corr = {"ivon": [], "refreshed": []}
    for seed in range(args.seeds):
        post, _, dense = bmr_digits.train(bx.NoPruning(), data, steps=args.steps, seed=seed, label=f"IVON seed {seed}",
                                          arch=args.arch, eval_every=args.steps)  # no history needed
        batches = [(x_tr[i:i + 256], y_tr[i:i + 256]) for i in range(0, x_tr.shape[0], 256)]
        refreshed = bx.refresh_curvature(post, loss_fn, batches, method=args.refresh, num_probes=args.probes,
                                         key=jax.random.key(seed))
        sources = {"ivon": post, "refreshed": refreshed}
        for name, source in sources.items():
            report = bx.curvature_report(source)
            corr[name].append({p: r["rank_corr_magnitude"] for p, r in report.items()})
        results.setdefault(("dense", None), []).append(dense)
        runs = [(s, n, p, c) for s in args.sparsities for n, (p, c) in pruners(s).items()]
        runs += [(None, n, p, c) for n, (p, c) in ADAPTIVE.items()]
        for sparsity, name, pruner, curvature in tqdm(runs, desc=f"seed {seed}", leave=False):
            with_mask = pruner.prune(sources[curvature])
            evaluated = eqx.tree_at(lambda p: p.mean, post, with_mask.mean)  # IVON's σ for every method
            metrics = evaluate(evaluated, x_te, y_te, jax.random.key(1000 + seed), samples)
            row = {k: float(v) for k, v in metrics.items()} | {"sparsity": float(bx.sparsity_summary(with_mask)["total"])}
            results.setdefault((name, sparsity), []).append(row)

    print(f"\nrank correlation of −ΔF with |μ| (mean over {args.seeds} seeds)")
    for name, rows in corr.items():
        print(f"  {name:<10} " + "  ".join(f"{p} {np.mean([r[p] for r in rows]):.3f}" for p in rows[0]))
    bmr_digits.report(results, args.seeds)
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return results, corr


if __name__ == "__main__":
    main()

"""Does Bayesian model reduction find the weights that are truly zero?

A sparse random teacher MLP (tanh; 80% of its input-layer weights exactly 0) labels Gaussian inputs with
Gaussian noise. A student of the same shape is trained with IVON on those labels, then pruned:

* adaptive BMR (no target: prune where ΔF > 0);
* magnitude pruning of the posterior mean at the sparsity adaptive BMR found;
* magnitude pruning at the teacher's true sparsity (an oracle target).

For each, the kept set is compared with the teacher's nonzero weights: precision (kept weights
that are truly nonzero) and recall (truly nonzero weights that are kept). Hidden units of an MLP
can be permuted freely, so to make zero patterns comparable the student starts near the teacher:
every teacher weight, the zeros included, plus Gaussian noise of std 0.3.

    python examples/teacher_student.py [--steps 10000] [--samples 4000] [--seed 0]
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import bmr_eqx as bx

NOISE = 0.1


def make_teacher(key, n_in=20, width=32, sparsity=0.8):
    k_model, k_mask, k_scale = jax.random.split(key, 3)
    teacher = eqx.nn.MLP(n_in, 1, width, 1, activation=jnp.tanh, key=k_model)
    # Sparse input layer, dense readout: every hidden unit matters, so the zero pattern is identifiable.
    sparse = bx.RandomPruning(sparsity=sparsity, distribution={"layers[1].weight": None}).prune(teacher, key=k_mask)
    # Input weights of magnitude 0.5 to 1.5, so the nonzeros are clearly distinguishable from zero.
    w = sparse.model.layers[0].weight
    sparse = eqx.tree_at(lambda s: s.model.layers[0].weight, sparse, jnp.sign(w) * (0.5 + jax.random.uniform(k_scale, w.shape)))
    return sparse.masked(), sparse.masks


def recovery(kept, truth):
    both = sum(int(jnp.sum(k & t)) for k, t in zip(kept, truth))
    n_kept, n_true = sum(int(k.sum()) for k in kept), sum(int(t.sum()) for t in truth)
    return both / max(n_kept, 1), both / max(n_true, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    k_teacher, k_x, k_noise, k_init, k_run = jax.random.split(jax.random.key(args.seed), 5)
    teacher, true_masks = make_teacher(k_teacher)
    x = jax.random.normal(k_x, (args.samples, 20))
    y = jax.vmap(teacher)(x)[:, 0] + NOISE * jax.random.normal(k_noise, (args.samples,))

    keys = jax.random.split(k_init, 2)
    start = eqx.tree_at(
        lambda m: [layer.weight for layer in m.layers], teacher,
        [layer.weight + 0.3 * jax.random.normal(k, layer.weight.shape) for layer, k in zip(teacher.layers, keys)],
    )
    post = bx.Posterior(bx.Sparse(start), ess=args.samples, weight_decay=1e-3, hess_init=50.0)
    opt = bx.ivon(optax.cosine_decay_schedule(0.01, args.steps), b2=0.999)
    state = opt.init(post)

    def loss_fn(model, x, y):  # mean Gaussian negative log-likelihood per example
        return 0.5 * jnp.mean((jax.vmap(model)(x)[:, 0] - y) ** 2) / NOISE**2

    value_and_grad = bx.noisy_value_and_grad(loss_fn)

    @eqx.filter_jit
    def step(post, state, key):
        k_batch, k_eps = jax.random.split(key)
        idx = jax.random.randint(k_batch, (128,), 0, args.samples)
        loss, grads, hess_estimate = value_and_grad(post, k_eps, x[idx], y[idx])
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        return eqx.apply_updates(post, updates), state, loss

    for key in tqdm(jax.random.split(k_run, args.steps), desc="IVON", mininterval=1.0):
        post, state, loss = step(post, state, key)

    paths = sorted(true_masks)  # the prunable leaves: "layers[0].weight", "layers[1].weight"
    truth = [true_masks[p] for p in paths]
    true_sparsity = 1 - sum(int(t.sum()) for t in truth) / sum(t.size for t in truth)
    adaptive = bx.AdaptiveBMR(threshold=0.0).prune(post)
    found = float(bx.sparsity_summary(adaptive)["total"])
    batches = [(x[i:i + 250], y[i:i + 250]) for i in range(0, args.samples, 250)]
    refreshed = bx.refresh_curvature(post, loss_fn, batches, method="fisher")  # the curvature from the data
    rows = {
        "adaptive BMR (no target)": adaptive,
        "magnitude @ BMR's sparsity": bx.MagnitudePruning(sparsity=found).prune(post),
        "magnitude @ true sparsity": bx.MagnitudePruning(sparsity=true_sparsity).prune(post),
        "adaptive BMR, refreshed": bx.AdaptiveBMR(threshold=0.0).prune(refreshed),
        "BMR @ true sparsity, refr.": bx.BMRPruning(sparsity=true_sparsity).prune(refreshed),
    }
    x_test = jax.random.normal(jax.random.key(99), (2000, 20))
    y_test = jax.vmap(teacher)(x_test)[:, 0]
    print(f"\nteacher: {true_sparsity:.3f} of weights are 0; final training loss {float(loss):.3f}")
    print(f"{'method':<28}{'sparsity':>10}{'precision':>11}{'recall':>9}{'test MSE':>11}")
    out = {}
    for name, pruned in rows.items():
        kept = [pruned.mean.masks[p] for p in paths]
        precision, recall = recovery(kept, truth)
        mse = float(jnp.mean((jax.vmap(pruned)(x_test)[:, 0] - y_test) ** 2))
        sparsity = float(bx.sparsity_summary(pruned)["total"])
        out[name] = dict(sparsity=sparsity, precision=precision, recall=recall, mse=mse)
        print(f"{name:<28}{sparsity:>10.3f}{precision:>11.3f}{recall:>9.3f}{mse:>11.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return out


if __name__ == "__main__":
    main()

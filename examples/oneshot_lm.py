"""One-shot pruning of a small byte-level language model: magnitude, Wanda, SparseGPT and Laplace BMR.

Trains a small causal transformer (Equinox) on the Python standard library's own source files (byte
tokens, nothing to download), then prunes the Linear weights of its blocks (the attention q/k/v/o
projections and the two MLP layers; embeddings, LayerNorms and the head stay dense) once, without
retraining, from a small calibration set drawn from the training split:

* magnitude: the weights of smallest |w| in each layer (`bx.MagnitudePruning`);
* Wanda: |w_ij|·‖X_j‖₂ compared within each output row (`bx.WandaPruning` on `bx.input_statistics`);
* SparseGPT: layer after layer, with the kept weights reconstructed (`bx.sparsegpt`);
* Laplace BMR: a Laplace posterior at the trained weights (`bx.laplace_posterior`, the diagonal
  curvature of the loss on the calibration set and the prior that the weight decay stands for),
  each layer's weights ranked by ΔF, the evidence lost by removing them (`bx.BMRPruning`);
* adaptive Laplace BMR: the same posterior, pruning every weight with ΔF > T (`bx.AdaptiveBMR`),
  which picks its own sparsity.

Each at 50% unstructured, 2:4 and 4:8 (adaptive: at the sparsity it reaches). Prints the held-out
perplexity of every pruned model in a table (rows: methods, columns: dense / 50% / 2:4 / 4:8, as in
the Wanda paper's) with each method's wall time (statistics or curvature, then one pruning; both
include JIT compilation), and plots held-out perplexity against sparsity (`--curve`).

The prior of the Laplace posterior: training minimises the mean per-sequence loss (the mean token
NLL of a sequence) with AdamW's decoupled weight decay λ. With plain SGD that decay is exactly an L2
penalty λ/2·‖θ‖² on the mean per-example loss, i.e. a Gaussian prior of precision λ per example,
so δ = λ by default (`--prior-precision` overrides it). Under Adam the correspondence is only
approximate (the decay is not preconditioned like the gradient). The posterior's sample size N is
the number of training sequences (`ess=` of `laplace_posterior`; the calibration set only estimates
the mean per-sequence curvature). The curvature is Hutchinson's Hessian diagonal by default
(`--laplace-method hessian`, 8 probes per calibration batch); the empirical Fisher (`fisher`) of a
loss averaged over 64-token sequences is tiny (the token gradients average out), so with it the
posterior is the prior almost everywhere and BMR ranks nearly like magnitude.

`--long` multiplies the steps by 4 and the training data, width and depth by 2 (an hour or more on
a laptop CPU).

    python examples/oneshot_lm.py [--steps 1200] [--train-chars 2000000] [--eval-chars 100000] [--calib 128]
                                  [--seq 64] [--dim 128] [--layers 2] [--heads 4] [--curve 0.3 0.5 0.7]
                                  [--laplace-method hessian|fisher] [--adaptive-threshold 2] [--long] [--out outputs]
"""

import argparse
import functools
import os
import sysconfig
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import bmr_eqx as bx

VOCAB = 256  # byte-level tokens
BATCH = 32
EVAL_BATCH = 128
CALIB_BATCH = 32
ADAPTIVE = "adaptive Laplace BMR"

# ---- data ----------------------------------------------------------------------------------------


def load_stdlib_bytes(train_chars: int, eval_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte tokens of the standard library's top-level `*.py` files, sorted by name: the training
    split is the first `train_chars` bytes; the held-out split the first `eval_chars` bytes of the
    files after the one the training split ends in (no file is in both)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"), key=lambda p: p.name)
    train, n, i = [], 0, 0
    while n < train_chars and i < len(files):
        train.append(files[i].read_bytes())
        n += len(train[-1])
        i += 1
    held, m = [], 0
    while m < eval_chars and i < len(files):
        held.append(files[i].read_bytes())
        m += len(held[-1])
        i += 1
    if n < train_chars or m < eval_chars:
        raise ValueError(f"{root} holds only {n + m} bytes of *.py files; lower --train-chars / --eval-chars.")
    as_tokens = lambda chunks, k: np.frombuffer(b"".join(chunks)[:k], np.uint8)  # noqa: E731
    return as_tokens(train, train_chars), as_tokens(held, eval_chars)


def windows(tokens: np.ndarray, starts: np.ndarray, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `(n, seq)` and next-byte targets `(n, seq)` of the windows starting at `starts`."""
    w = tokens[starts[:, None] + np.arange(seq + 1)].astype(np.int32)
    return w[:, :-1], w[:, 1:]


# ---- model ---------------------------------------------------------------------------------------


class Block(eqx.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a gelu MLP of width 4·dim."""

    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, dim: int, heads: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attn = eqx.nn.MultiheadAttention(heads, dim, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.fc1 = eqx.nn.Linear(dim, 4 * dim, key=k2)
        self.fc2 = eqx.nn.Linear(4 * dim, dim, key=k3)

    def __call__(self, x, mask):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attn(h, h, h, mask=mask)
        h = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(h)))


class ByteTransformer(eqx.Module):
    """Causal byte-level transformer, called on one sequence: `model(tokens (seq,)) -> logits (seq, 256)`."""

    embed: eqx.nn.Embedding
    pos: jax.Array
    blocks: list[Block]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, *, seq: int, dim: int, layers: int, heads: int, key):
        keys = jax.random.split(key, layers + 3)
        self.embed = eqx.nn.Embedding(VOCAB, dim, key=keys[0])
        self.pos = 0.02 * jax.random.normal(keys[1], (seq, dim))
        self.blocks = [Block(dim, heads, k) for k in keys[3:]]
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, VOCAB, key=keys[2])

    def __call__(self, tokens):
        n = tokens.shape[0]
        x = jax.vmap(self.embed)(tokens) + self.pos[:n]
        mask = jnp.tril(jnp.ones((n, n), bool))  # position i attends to positions <= i
        for block in self.blocks:
            x = block(x, mask)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


def in_blocks(path: str, leaf) -> bool:
    """The leaves pruned: the 2-D Linear weights inside the blocks (attention projections, MLP)."""
    return path.startswith("blocks[") and path.endswith(".weight") and jnp.ndim(leaf) == 2


def block_paths(model) -> list[str]:
    return list(bx.Sparse(model, filter_fn=in_blocks).masks)


def loss_fn(model, x, y):
    """Mean next-byte NLL over the batch (the mean per-sequence loss of the mean token NLL)."""
    return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def forward(model, batch):
    return jax.vmap(model)(batch[0])


# ---- training and evaluation ---------------------------------------------------------------------


def train(model, tokens: np.ndarray, *, steps: int, seq: int, lr: float, weight_decay: float, seed: int):
    """AdamW (warmup + cosine, clipped gradients) on random windows of `tokens`, batch 32."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, end_value=lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    data = jnp.asarray(tokens)

    @eqx.filter_jit
    def step(model, state, key):
        starts = jax.random.randint(key, (BATCH,), 0, data.shape[0] - seq - 1)
        w = data[starts[:, None] + jnp.arange(seq + 1)].astype(jnp.int32)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, w[:, :-1], w[:, 1:])
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    keys = jax.random.split(jax.random.key(seed + 1), steps)
    bar = tqdm(range(steps), desc="train", mininterval=1.0)
    for i in bar:
        model, state, loss = step(model, state, keys[i])
        if i % 50 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    return model


@eqx.filter_jit
def _nll_sum(model, x, y, weight):
    nll = optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y)
    return jnp.sum(nll.sum(1) * weight)


def perplexity(model, held: tuple[np.ndarray, np.ndarray]) -> float:
    """exp(mean token NLL) over the held-out windows, in fixed-size (padded) batches."""
    x, y = held
    n = x.shape[0]
    pad = -n % EVAL_BATCH
    x, y = np.pad(x, ((0, pad), (0, 0))), np.pad(y, ((0, pad), (0, 0)))
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    total = sum(float(_nll_sum(model, x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH], weight[i:i + EVAL_BATCH]))
                for i in range(0, x.shape[0], EVAL_BATCH))
    return float(np.exp(total / (n * x.shape[1])))


# ---- pruning -------------------------------------------------------------------------------------


def timed(fn):
    """`(fn(), seconds)`, waiting for the arrays it returns."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def _setting_kwargs(setting):
    """`sparsity=` for a float setting, `sparsity_type=` for "2:4" / "4:8"."""
    return {"sparsity_type": setting} if isinstance(setting, str) else {"sparsity": setting}


def make_methods(trained, calib, args):
    """{method: (prepare, prune)}: `prepare()` computes what the method reads from the calibration
    data (timed once), `prune(prepared, setting)` gives the pruned model (a `Sparse`, whose call
    is the pruned model)."""
    sparse = bx.Sparse(trained, filter_fn=in_blocks)  # only the blocks' Linear weights are prunable
    paths = block_paths(trained)
    delta = args.weight_decay if args.prior_precision is None else args.prior_precision

    def sparsegpt(_, setting):
        nm = {"n_by_m": setting} if isinstance(setting, str) else {"sparsity": setting}
        return bx.sparsegpt(trained, forward, calib, paths=paths, **nm)

    return {
        "magnitude": (lambda: None, lambda _, s: bx.MagnitudePruning(**_setting_kwargs(s)).prune(sparse)),
        "Wanda": (lambda: bx.input_statistics(trained, forward, calib, paths=paths, gram=False),
                  lambda stats, s: bx.WandaPruning(stats, **_setting_kwargs(s)).prune(sparse)),
        "SparseGPT": (lambda: None, sparsegpt),  # its statistics are recomputed layer by layer
        "Laplace BMR": (lambda: bx.laplace_posterior(sparse, loss_fn, calib, weight_decay=delta,
                                                     ess=args.train_chars / args.seq,  # training sequences
                                                     method=args.laplace_method, num_probes=args.probes),
                        lambda post, s: bx.BMRPruning(**_setting_kwargs(s)).prune(post).mean),
    }


def label(setting) -> str:
    return setting if isinstance(setting, str) else f"{setting:.0%}"


def report(results, adaptive_sparsity, prepare_s, prune_s, calib_desc):
    """Print the Wanda-paper table: rows methods, columns dense / 50% / 2:4 / 4:8 / adaptive."""
    cols = ["dense", 0.5, "2:4", "4:8"]
    head = f"{'method':<22}" + "".join(f"{label(c):>9}" for c in cols) + f"{'adaptive':>18}{'stats s':>9}{'prune s':>9}"
    print("\nheld-out perplexity (lower is better); prune s: the 50% pruning (SparseGPT: statistics included)")
    print(head)
    print("-" * len(head))
    methods = ["dense", *prepare_s, ADAPTIVE]
    for m in methods:
        line = f"{m:<22}"
        for c in cols:
            v = results.get((m, c))
            line += f"{v:>9.2f}" if v is not None else f"{'':>9}"
        if m == ADAPTIVE:
            line += f"{results[(m, 'adaptive')]:>9.2f} @ {adaptive_sparsity:>5.1%}"
        else:
            line += f"{'':>18}"
        if m in prepare_s:
            line += f"{prepare_s[m]:>9.1f}{prune_s[m]:>9.1f}"
        print(line.rstrip())
    print(f"calibration: {calib_desc}; times include JIT compilation")


def plot(results, curve, adaptive_sparsity, methods, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in methods:
        ax.plot(curve, [results[(m, s)] for s in curve], "o-", label=m)
    ax.axhline(results[("dense", "dense")], color="k", ls="--", label="dense")
    ax.plot([adaptive_sparsity], [results[(ADAPTIVE, "adaptive")]], "*", ms=14, color="C4", label=ADAPTIVE)
    ax.set(xlabel="sparsity of the blocks' Linear weights", ylabel="held-out perplexity (bytes)",
           title="One-shot pruning of a byte-level transformer (no retraining)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    """Runs the benchmark; returns `{(method, setting): held-out perplexity}` with settings `"dense"`,
    a float sparsity (`--curve` and 0.5), `"2:4"`, `"4:8"` or `"adaptive"`, plus the key
    `"adaptive_sparsity"` (the sparsity adaptive Laplace BMR reached on the prunable weights)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="training steps (batch 32)")
    parser.add_argument("--train-chars", type=int, default=2_000_000, help="bytes of the training split")
    parser.add_argument("--eval-chars", type=int, default=100_000, help="bytes of the held-out split")
    parser.add_argument("--calib", type=int, default=128, help="calibration sequences (from the training split)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (warmup, cosine)")
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW's (decoupled) weight decay λ")
    parser.add_argument("--prior-precision", type=float, default=None,
                        help="δ of the Laplace posterior, per example (default: the weight decay λ)")
    parser.add_argument("--laplace-method", choices=["fisher", "hessian"], default="hessian",
                        help="curvature of the Laplace posterior: empirical Fisher or Hutchinson's Hessian diagonal")
    parser.add_argument("--probes", type=int, default=8, help="Hutchinson probes per calibration batch")
    parser.add_argument("--adaptive-threshold", type=float, default=2.0, help="T of adaptive BMR (prune iff ΔF > T)")
    parser.add_argument("--curve", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="sparsities of the plot")
    parser.add_argument("--long", action="store_true", help="4x the steps, 2x the training data, width and depth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    if args.long:
        args.steps, args.train_chars = 4 * args.steps, 2 * args.train_chars
        args.dim, args.layers = 2 * args.dim, 2 * args.layers
    t0 = time.perf_counter()

    train_tokens, held_tokens = load_stdlib_bytes(args.train_chars, args.eval_chars)
    held = windows(held_tokens, np.arange(0, held_tokens.size - args.seq - 1, args.seq), args.seq)
    rng = np.random.default_rng(args.seed)
    cx, cy = windows(train_tokens, rng.integers(0, train_tokens.size - args.seq - 1, args.calib), args.seq)
    calib = [(jnp.asarray(cx[i:i + CALIB_BATCH]), jnp.asarray(cy[i:i + CALIB_BATCH]))
             for i in range(0, args.calib, CALIB_BATCH)]
    model = ByteTransformer(seq=args.seq, dim=args.dim, layers=args.layers, heads=args.heads,
                            key=jax.random.key(args.seed))
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    n_prunable = sum(m.size for m in bx.Sparse(model, filter_fn=in_blocks).masks.values())
    print(f"data: {train_tokens.size:,} training bytes, {held[0].shape[0]} held-out windows of {args.seq}; model: "
          f"{n_params:,} parameters, {n_prunable:,} prunable ({args.layers} blocks, dim {args.dim})")

    trained = train(model, train_tokens, steps=args.steps, seq=args.seq, lr=args.lr, weight_decay=args.weight_decay,
                    seed=args.seed)
    results = {("dense", "dense"): perplexity(trained, held)}
    print(f"dense held-out perplexity {results[('dense', 'dense')]:.3f}  ({time.perf_counter() - t0:.0f} s)")

    settings = list(dict.fromkeys([0.5, "2:4", "4:8", *args.curve]))
    methods = make_methods(trained, calib, args)
    prepared, prepare_s, prune_s, reached = {}, {}, {}, {}
    with tqdm(total=len(methods) * len(settings) + 1, desc="prune") as bar:
        for name, (prepare, prune) in methods.items():
            prepared[name], prepare_s[name] = timed(prepare)
            for s in settings:
                bar.set_postfix_str(f"{name} {label(s)}")
                pruned, seconds = timed(functools.partial(prune, prepared[name], s))
                if s == 0.5:
                    prune_s[name] = seconds
                results[(name, s)] = perplexity(pruned, held)
                reached[(name, s)] = float(bx.sparsity_summary(pruned)["total"])
                bar.update()
        pruned = bx.AdaptiveBMR(args.adaptive_threshold).prune(prepared["Laplace BMR"]).mean
        adaptive_sparsity = float(bx.sparsity_summary(pruned)["total"])
        results[(ADAPTIVE, "adaptive")] = perplexity(pruned, held)
        bar.update()
    # Per-row pruning rounds each row's count: a little off target when rows are short (small --dim).
    off = {k: round(v, 4) for k, v in reached.items() if abs(v - (0.5 if isinstance(k[1], str) else k[1])) > 0.01}
    if off:
        print(f"warning: sparsity reached off target: {off}")

    delta = args.weight_decay if args.prior_precision is None else args.prior_precision
    report(results, adaptive_sparsity, prepare_s, prune_s,
           f"{args.calib} sequences x {args.seq} bytes = {args.calib * args.seq:,} tokens; Laplace: "
           f"{args.laplace_method}, δ = {delta:g}, adaptive threshold T = {args.adaptive_threshold:g}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "oneshot_lm.png")
    plot(results, sorted(args.curve), adaptive_sparsity, list(methods), path)
    print(f"plot: {path}   time: {time.perf_counter() - t0:.1f} s")
    return results | {"adaptive_sparsity": adaptive_sparsity}


if __name__ == "__main__":
    main()

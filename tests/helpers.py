"""Models shared by the tests: the ones Equinox users really write (an MLP, a CNN with BatchNorm,
State and Dropout, a small transformer, a scan-over-layers stack), with a loss for each."""

import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest


def mlp(key=0, in_size=16, out_size=4, width=32, depth=2):
    """`eqx.nn.MLP(16, 4, 32, 2)`: weights (32, 16), (32, 32), (4, 32)."""
    return eqx.nn.MLP(in_size, out_size, width, depth, key=jax.random.key(key))


class CNN(eqx.Module):
    """Conv -> BatchNorm -> relu -> Conv -> Dropout -> mean-pool -> Linear head (10 classes).
    Input (1, 8, 8). Stateful: build with `eqx.nn.make_with_state`."""

    conv1: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    dropout: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
        self.bn = eqx.nn.BatchNorm(8, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(8, 16, 3, padding=1, key=k2)
        self.dropout = eqx.nn.Dropout(0.1)
        self.head = eqx.nn.Linear(16, 10, key=k3)

    def __call__(self, x, state, *, key=None):
        x = self.conv1(x)
        x, state = self.bn(x, state)
        x = jax.nn.relu(self.conv2(jax.nn.relu(x)))
        x = self.dropout(x, key=key)
        return self.head(jnp.mean(x, axis=(1, 2))), state


def cnn(key=0):
    """`(model, state)` of a `CNN`, built with `make_with_state`."""
    return eqx.nn.make_with_state(CNN)(jax.random.key(key))


class Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    ff1: eqx.nn.Linear
    ff2: eqx.nn.Linear

    def __init__(self, dim, heads, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attn = eqx.nn.MultiheadAttention(heads, dim, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.ff1 = eqx.nn.Linear(dim, 2 * dim, key=k2)
        self.ff2 = eqx.nn.Linear(2 * dim, dim, key=k3)

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.ff2)(jax.nn.gelu(jax.vmap(self.ff1)(h)))


class Transformer(eqx.Module):
    """Token embedding -> one pre-norm attention block -> mean-pool -> Linear head. Input: int tokens (seq,)."""

    embed: eqx.nn.Embedding
    block: Block
    head: eqx.nn.Linear

    def __init__(self, key, vocab=16, dim=16, heads=2, classes=4):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Embedding(vocab, dim, key=k1)
        self.block = Block(dim, heads, k2)
        self.head = eqx.nn.Linear(dim, classes, key=k3)

    def __call__(self, tokens):
        return self.head(jnp.mean(self.block(jax.vmap(self.embed)(tokens)), axis=0))


def transformer(key=0):
    return Transformer(jax.random.key(key))


class ScanMLP(eqx.Module):
    """`depth` residual Linear layers stacked with `filter_vmap` (weights (depth, w, w), biases
    (depth, w)) and applied with `lax.scan`, plus an input and an output layer."""

    inp: eqx.nn.Linear
    layers: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key, width=16, depth=3):
        k1, k2, k3 = jax.random.split(key, 3)
        self.inp = eqx.nn.Linear(8, width, key=k1)
        self.layers = eqx.filter_vmap(lambda k: eqx.nn.Linear(width, width, key=k))(jax.random.split(k2, depth))
        self.out = eqx.nn.Linear(width, 4, key=k3)

    def __call__(self, x):
        params, static = eqx.partition(self.layers, eqx.is_array)

        def body(h, p):
            return h + jnp.tanh(eqx.combine(p, static)(h)), None

        h, _ = jax.lax.scan(body, self.inp(x), params)
        return self.out(h)


def scan_mlp(key=0):
    return ScanMLP(jax.random.key(key))


def mlp_batch(key=1, n=32):
    x = jax.random.normal(jax.random.key(key), (n, 16))
    return x, jnp.arange(n) % 4


def cnn_batch(key=1, n=16):
    x = jax.random.normal(jax.random.key(key), (n, 1, 8, 8))
    return x, jnp.arange(n) % 10


def transformer_batch(key=1, n=16, seq=6):
    return jax.random.randint(jax.random.key(key), (n, seq), 0, 16), jnp.arange(n) % 4


def scan_batch(key=1, n=16):
    return jax.random.normal(jax.random.key(key), (n, 8)), jnp.arange(n) % 4


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def stateless_loss(model, x, y):
    """Loss of a stateless model (MLP, transformer, scan stack) on a batch."""
    return xent(jax.vmap(model)(x), y)


def cnn_loss(model, state, x, y, key):
    """Loss of a `CNN` (or a `Sparse`/`Posterior` of one); returns `(loss, new_state)`."""
    keys = jax.random.split(key, x.shape[0])
    logits, state = jax.vmap(lambda xi, ki: model(xi, state, key=ki), axis_name="batch", in_axes=(0, 0), out_axes=(0, None))(x, keys)
    return xent(logits, y), state


# name -> (build(key) -> model[, state], batch(), prunable leaf paths under the default rule)
MODELS = {
    "mlp": (mlp, mlp_batch, ["layers[0].weight", "layers[1].weight", "layers[2].weight"]),
    "cnn": (cnn, cnn_batch, ["conv1.weight", "conv2.weight", "head.weight"]),
    "transformer": (
        transformer,
        transformer_batch,
        ["embed.weight", "block.attn.query_proj.weight", "block.attn.key_proj.weight", "block.attn.value_proj.weight",
         "block.attn.output_proj.weight", "block.ff1.weight", "block.ff2.weight", "head.weight"],
    ),
    "scan": (scan_mlp, scan_batch, ["inp.weight", "layers.weight", "out.weight"]),
}


def build(name, key=0):
    """`(model, state)` for any model of `MODELS` (`state` None for stateless ones)."""
    out = MODELS[name][0](key)
    return out if isinstance(out, tuple) else (out, None)


def loss_for(name):
    """`loss(model, state, x, y, key) -> (loss, state)` for any model of `MODELS`."""
    if name == "cnn":
        return cnn_loss
    return lambda model, state, x, y, key: (stateless_loss(model, x, y), state)


# ---- test files run by pytest in a process of their own (see conftest.py) ----------------------------

TESTS = pathlib.Path(__file__).resolve().parent


def pytest_in_own_process(filename, *args, timeout=1200):
    """A `pytest.mark.command` running `pytest -q tests/<filename> [args]` from the project root."""
    return pytest.mark.command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / filename), *args],
        timeout=timeout, cwd=TESTS.parent,
    )


def assert_pytest_passed(out):
    """`out` (a `command_output`) is a `pytest -q` run that passed, or skipped every test it selected."""
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode == 0 and " skipped" in last and " passed" not in last:
        pytest.skip(f"the process skipped everything: {last}")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in last, out.stdout[-6000:]

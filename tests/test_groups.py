"""Coupled groups found by tracing (`dependency_groups`) and pruning along them (`Coupled`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import build

import bmr_eqx as bx


class Residual(eqx.Module):
    """inp -> h; h += relu(mid(h)) (a residual add); head reads concat([h, tanh(side(h))])."""

    inp: eqx.nn.Linear
    mid: eqx.nn.Linear
    side: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, width=8):
        ks = jax.random.split(key, 4)
        self.inp = eqx.nn.Linear(4, width, key=ks[0])
        self.mid = eqx.nn.Linear(width, width, key=ks[1])
        self.side = eqx.nn.Linear(width, width, key=ks[2])
        self.head = eqx.nn.Linear(2 * width, 3, key=ks[3])

    def __call__(self, x):
        h = self.inp(x)
        h = h + jax.nn.relu(self.mid(h))
        return self.head(jnp.concatenate([h, jnp.tanh(self.side(h))]))


def example(name):
    """(model, state, example args) of the models the groups are checked on."""
    if name == "residual":
        return Residual(jax.random.key(0)), None, (jnp.ones(4),)
    model, state = build(name)
    args = {"mlp": (jnp.ones(16),), "cnn": (jnp.ones((1, 8, 8)), state), "transformer": (jnp.arange(6),)}[name]
    return model, state, args


def summary(groups):
    return [(g.size, [(m.path, m.axis) for m in g.members], list(g.consumers)) for g in groups]


R, HEAD_OF = tuple(range(8)), (0,) * 8 + (1,) * 8
EXPECTED = {
    "mlp": [
        (32, [("layers[0].weight", 0), ("layers[0].bias", 0), ("layers[1].weight", 1)], [("layers[1].weight", 1)]),
        (32, [("layers[1].weight", 0), ("layers[1].bias", 0), ("layers[2].weight", 1)], [("layers[2].weight", 1)]),
    ],
    "cnn": [
        (8, [("conv1.weight", 0), ("conv1.bias", 0), ("bn.weight", 0), ("bn.bias", 0), ("conv2.weight", 1),
             ("state(bn.batch_state_index)[0]", 0), ("state(bn.batch_state_index)[1]", 0)], [("conv2.weight", 1)]),
        (16, [("conv2.weight", 0), ("conv2.bias", 0), ("head.weight", 1)], [("head.weight", 1)]),
    ],
    "residual": [
        (8, [("inp.weight", 0), ("inp.bias", 0), ("mid.weight", 0), ("mid.weight", 1), ("mid.bias", 0),
             ("side.weight", 1), ("head.weight", 1)], [("head.weight", 1), ("mid.weight", 1), ("side.weight", 1)]),
        (8, [("side.weight", 0), ("side.bias", 0), ("head.weight", 1)], [("head.weight", 1)]),
    ],
    "transformer": [
        (2, [("block.attn.query_proj.weight", 0), ("block.attn.key_proj.weight", 0),
             ("block.attn.value_proj.weight", 0), ("block.attn.output_proj.weight", 1)],
         [("block.attn.output_proj.weight", 1)]),
        (8, [("block.attn.value_proj.weight", 0), ("block.attn.output_proj.weight", 1)],
         [("block.attn.output_proj.weight", 1)]),
        (32, [("block.ff1.weight", 0), ("block.ff1.bias", 0), ("block.ff2.weight", 1)], [("block.ff2.weight", 1)]),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups_match_hand_written_expectations(name):
    model, _, args = example(name)
    groups = bx.dependency_groups(model, *args)
    assert summary(groups) == EXPECTED[name]
    channels = {(m.path, m.axis): m.channels for m in groups[0].members}
    if name == "residual":  # the concatenation: the head's first 8 inputs are h, the last 8 side's
        assert [g.members[-1].channels for g in groups] == [R + (-1,) * 8, (-1,) * 8 + R]
    if name == "transformer":  # heads are blocks of qk_size (vo_size) rows; value dims repeat per head
        assert channels[("block.attn.query_proj.weight", 0)] == HEAD_OF
        assert groups[0].members[-1].indices(1).tolist() == list(range(8, 16))
        assert channels[("block.attn.output_proj.weight", 1)] == HEAD_OF
        assert groups[1].members[0].channels == R + R
    else:  # a plain channel axis: its entries are the channels in order (or another group's)
        for g in groups:
            for m in g.members:
                assert [c for c in m.channels if c >= 0] == list(range(g.size))


def test_wrappers_are_traced_as_their_plain_model():
    model, state, args = example("cnn")
    post = bx.Posterior(bx.Sparse(model), ess=100.0)
    assert summary(bx.dependency_groups(post, *args)) == EXPECTED["cnn"]


def test_no_group_reaches_inputs_outputs_layernorm_or_scan():
    model, _, args = example("transformer")
    members = {m.path for g in bx.dependency_groups(model, *args) for m in g.members}
    # the residual stream is normalised by LayerNorm and read by the head: in no group
    assert not members & {"embed.weight", "head.weight", "block.norm1.weight"}
    scan, _ = build("scan")
    assert bx.dependency_groups(scan, jnp.ones(8)) == []  # lax.scan is not followed


def test_coupled_magnitude_ranks_channels_by_all_their_weights():
    model, _, args = example("residual")
    groups = bx.dependency_groups(model, *args)
    sparse = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Coupled(groups)).prune(bx.Sparse(model))
    w = {k: np.abs(np.asarray(v)) for k, v in (("inp", model.inp.weight), ("mid", model.mid.weight),
                                               ("side", model.side.weight), ("head", model.head.weight))}
    # group 0: inp rows, mid rows and columns, side columns, head's first 8 columns (weights are prunable)
    oracle = w["inp"].sum(1) + w["mid"].sum(1) + w["mid"].sum(0) + w["side"].sum(0) + w["head"][:, :8].sum(0)
    kept = np.sort(np.argsort(-oracle)[:4])
    assert np.flatnonzero(np.asarray(sparse.masks["inp.weight"]).any(1)).tolist() == kept.tolist()
    side_kept = np.flatnonzero(np.asarray(sparse.masks["side.weight"]).any(1))
    assert len(side_kept) == 4
    head = np.asarray(sparse.masks["head.weight"])
    assert np.flatnonzero(head.any(0)).tolist() == kept.tolist() + (8 + side_kept).tolist()
    mid = np.asarray(sparse.masks["mid.weight"])
    np.testing.assert_array_equal(mid, np.outer(np.isin(range(8), kept), np.isin(range(8), kept)))


def test_adaptive_bmr_prunes_along_groups_of_a_posterior():
    model, state, args = example("cnn")
    groups = bx.dependency_groups(model, *args)
    post = bx.Posterior(bx.Sparse(model), ess=50.0)
    # a weak posterior: channels with small weights are not worth their evidence cost
    post = eqx.tree_at(lambda p: p.hess, post, {k: jnp.full_like(v, 2.0) for k, v in post.hess.items()})
    pruned = bx.AdaptiveBMR(sparsity_type=bx.Coupled(groups)).prune(post)
    masks = pruned.mean.masks
    conv1, conv2 = np.asarray(masks["conv1.weight"]), np.asarray(masks["conv2.weight"])
    out1 = conv1.reshape(8, -1).any(1)
    for c in range(8):  # a channel is pruned in the producer and the consumer together
        assert conv1[c].all() == out1[c] and (conv2[:, c].any() == out1[c])
    assert 0 < out1.sum() < 8


def test_coupled_errors():
    with pytest.raises(TypeError, match="dependency_groups"):
        bx.Coupled(["layers[0].weight"])
    model, _, args = example("mlp")
    groups = bx.dependency_groups(model, *args)
    with pytest.raises(ValueError, match="unstructured"):
        bx.MagnitudePruning(sparsity=0.5, distribution="global", sparsity_type=bx.Coupled(groups))

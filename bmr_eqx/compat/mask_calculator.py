"""Scores -> uint8 masks with JaxPruner's signatures and tie rules, computed by `bmr_eqx`'s top-k
(`topk_mask`, `nm_mask`) and structures (`Block`, `Channel`)."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from .. import _masks, _selection as _core
from . import sparsity_types

MASK_DTYPE = "uint8"

TopKFnType = Callable[[jax.Array, float], jax.Array]


def get_topk_fn(sparsity_type) -> TopKFnType:
    """The `topk_fn(scores, sparsity) -> mask` for a sparsity type (the class `Unstructured` itself
    is accepted as well as an instance)."""
    if sparsity_type is sparsity_types.Unstructured or isinstance(sparsity_type, sparsity_types.Unstructured):
        return topk_mask_calculator
    if isinstance(sparsity_type, sparsity_types.Block):
        return functools.partial(
            topk_block_mask_calculator,
            block_height=sparsity_type.block_shape[0],
            block_width=sparsity_type.block_shape[1],
            use_avg_pooling=sparsity_type.use_avg_pooling,
        )
    if isinstance(sparsity_type, sparsity_types.NByM):
        return functools.partial(topk_n_by_m_mask_calculator, sparsity_type=sparsity_type)
    if isinstance(sparsity_type, sparsity_types.Channel):
        return functools.partial(topk_channel_mask_calculator, sparsity_type=sparsity_type)
    raise ValueError(
        f"Not a supported sparsity type: {sparsity_type!r}; use jaxpruner.sparsity_types.Unstructured(), "
        "Block(block_shape), NByM(n, m) or Channel(axis)."
    )


def topk_mask_calculator(scores, sparsity):
    """Keep the `max(1, round(size·(1 − sparsity)))` highest scores (ties: lower flat index);
    sparsity 0 keeps everything."""
    return _masks.topk_mask(jnp.asarray(scores), sparsity).astype(MASK_DTYPE)


_topk_mask_calculator_internal = topk_mask_calculator


def topk_n_by_m_mask_calculator(scores, sparsity, sparsity_type):
    """Keep the `n` highest of every `m` consecutive scores along `sparsity_type.axis` (ties: the
    later entry, as in JaxPruner); sparsity 0 keeps everything.

    Raises `ValueError` if `n > m` or the axis length is not a multiple of `m`.
    """
    scores = jnp.asarray(scores)
    n, m = sparsity_type.n, sparsity_type.m
    axis = sparsity_type.axis % scores.ndim
    if n > m:
        raise ValueError(f"N({n}) must be <= M({m}) in N({n}):M({m}) structured sparsity.")
    if scores.shape[axis] % m:
        raise ValueError(
            f"The target axis {sparsity_type.axis} (length {scores.shape[axis]}) is not divisible by M={m}."
        )
    # bmr_eqx breaks ties towards the lower index, JaxPruner towards the higher one: reverse the axis.
    keep = jnp.flip(_masks.nm_mask(jnp.flip(scores, axis), n, m, axis), axis)
    return jnp.where(jnp.asarray(sparsity) == 0, True, keep).astype(MASK_DTYPE)


def _block_structure(shape, block_height, block_width):
    """The core `Block` that pools like JaxPruner (one block spans every axis beyond the second) and
    the padded shape it tiles."""
    if len(shape) < 2:
        block = (block_width,)
    else:
        block = (block_height, block_width, *shape[2:])
    padded = tuple(-(-d // b) * b for d, b in zip(shape, block))
    return block, padded


def topk_block_mask_calculator(scores, sparsity, block_height, block_width, use_avg_pooling):
    """Keep the highest-scoring blocks (`block_height × block_width` on the first two axes, every
    further axis whole; a 1-D leaf in blocks of `block_width`). Blocks are ranked by the mean
    (`use_avg_pooling`) or the max of their entries; edge blocks that do not fill are ranked by
    the entries they have."""
    scores = jnp.asarray(scores, jnp.float32)
    block, padded = _block_structure(scores.shape, block_height, block_width)
    pads = [(0, p - d) for d, p in zip(scores.shape, padded)]
    if use_avg_pooling:
        total = _core.Block(block, "sum").group(jnp.pad(scores, pads))
        count = _core.Block(block, "sum").group(jnp.pad(jnp.ones_like(scores), pads))
        pooled = total / count
    else:
        pooled = _core.Block(block, "max").group(jnp.pad(scores, pads, constant_values=-jnp.inf))
    keep = _core.Block(block).expand(_masks.topk_mask(pooled, sparsity), padded)
    return keep[tuple(slice(0, d) for d in scores.shape)].astype(MASK_DTYPE)


def topk_channel_mask_calculator(scores, sparsity, sparsity_type):
    """Keep the slices along `sparsity_type.axis` with the highest summed scores."""
    scores = jnp.asarray(scores)
    structure = _core.Channel(axis=sparsity_type.axis % scores.ndim)
    keep = _masks.topk_mask(structure.group(scores), sparsity)
    return structure.expand(keep, scores.shape).astype(MASK_DTYPE)

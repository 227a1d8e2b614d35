"""Sparsity and mask-overlap summaries for any pytree."""

import jax
import jax.numpy as jnp

from ._tree import flat_items, summary_key


def _flat_summary(tree):
    """`{'a/b': value}` for every leaf of `tree` (None leaves included)."""
    items, _ = flat_items(tree)
    return {summary_key(k): v for k, v in items}


def summarize_sparsity(param_tree, only_total_sparsity=False):
    """The sparsity (fraction of zeros) of every parameter, keyed `'a/b/c'` (None parameters map
    to None), plus `_total_sparsity`, `_nparams_nnz` and `_nparams`; only the totals with
    `only_total_sparsity`. Works for dicts, lists, tuples, NamedTuples and Equinox modules."""
    non_zeros = jax.tree.map(jnp.count_nonzero, param_tree)
    sizes = jax.tree.map(jnp.size, param_tree)

    def sparsity(nnz, size):
        return 1 - jnp.float32(nnz) / jnp.float32(size)

    summary = {} if only_total_sparsity else _flat_summary(jax.tree.map(sparsity, non_zeros, sizes))
    nnz, total = sum(jax.tree.leaves(non_zeros)), sum(jax.tree.leaves(sizes))
    summary["_total_sparsity"] = sparsity(nnz, total)
    summary["_nparams_nnz"] = jnp.float32(nnz)
    summary["_nparams"] = jnp.float32(total)
    return summary


def summarize_intersection(mask_tree1, mask_tree2, only_total_intersection=False):
    """The fraction of the ones of `mask_tree1` that are ones in `mask_tree2`, per mask (keyed
    `'a/b/c'`; None masks map to None) and in total (`_total_intersection`)."""
    both = jax.tree.map(lambda a, b: jnp.sum((a == 1) & (b == 1)), mask_tree1, mask_tree2)
    ones = jax.tree.map(jnp.sum, mask_tree1)

    def ratio(a, b):
        return a / jnp.maximum(b, 1)

    summary = {} if only_total_intersection else _flat_summary(jax.tree.map(ratio, both, ones))
    summary["_total_intersection"] = ratio(sum(jax.tree.leaves(both)), sum(jax.tree.leaves(ones)))
    return summary

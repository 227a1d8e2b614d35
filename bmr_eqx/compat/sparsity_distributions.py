"""JaxPruner's sparsity distributions, for any pytree of parameters.

Keys are tuples: `('b', 'd')` for `params['b']['d']`, `('layers', 0, 'weight')` for an Equinox
MLP's first weight. The ERK arithmetic is `bmr_eqx.erk_sparsities`.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._distributions import erk_sparsities
from ._tree import flat_items, is_single_array

FilterFnType = Callable[[tuple, Any], bool]
CustomSparsityMapType = Mapping[tuple, float]


def KERNEL_FILTER_FN(key, param):  # noqa: N802 - JaxPruner's name
    return key[-1] == "kernel"


def NOT_DIM_ONE_FILTER_FN(key, param):  # noqa: N802 - JaxPruner's name
    return param.ndim > 1


def uniform(params, sparsity, filter_fn=NOT_DIM_ONE_FILTER_FN, custom_sparsity_map=None):
    """The same sparsity for every parameter that `filter_fn(key, param)` selects (None for the
    others); `custom_sparsity_map[key]` overrides it. A single array gets a float (its key is
    `('kernel',)`).

    **Arguments:** `params`, any pytree (dict, list, tuple, NamedTuple, Equinox module; None leaves
    stay None); `sparsity` in `[0, 1)`; `filter_fn(key, param)`; `custom_sparsity_map`, a dict
    from key tuple to sparsity.

    **Returns:** a tree shaped like `params` with float or None leaves.
    """
    _check_sparsity(sparsity)
    custom = custom_sparsity_map or {}

    def pick(key, param):
        if key in custom:
            return custom[key]
        if param is not None and filter_fn(key, param):
            return sparsity
        return None

    if is_single_array(params):
        return pick(("kernel",), params)
    items, treedef = flat_items(params)
    return treedef.unflatten([pick(k, p) for k, p in items])


def erk(param_tree, sparsity, filter_fn=NOT_DIM_ONE_FILTER_FN, custom_sparsity_map=None):
    """Erdős–Rényi-kernel sparsities for the parameters `filter_fn` selects (None for the others):
    denser small layers, the same kept count as a uniform allocation; `custom_sparsity_map[key]`
    fixes a parameter's sparsity outside the budget.

    **Returns:** a tree shaped like `param_tree` with float or None leaves.
    """
    if is_single_array(param_tree):
        raise ValueError("Single parameter is provided. Please provide a paramater tree.")
    items, treedef = flat_items(param_tree)
    shapes = {k: p.shape for k, p in items if p is not None and filter_fn(k, p)}
    sparsities = get_sparsities_erdos_renyi(shapes, sparsity, custom_sparsity_map)
    return treedef.unflatten([sparsities.get(k) for k, _ in items])


def _check_sparsity(sparsity):
    if isinstance(sparsity, (int, float)) and not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}.")


def get_n_zeros(size, sparsity):
    """The number of zeros of a `size`-entry layer at `sparsity`: `floor(sparsity·size)`."""
    return int(np.floor(sparsity * size))


def get_sparsities_erdos_renyi(
    var_shape_dict, default_sparsity, custom_sparsity_map=None, include_kernel=True, erk_power_scale=1.0
):
    """ERK sparsities for a dict of shapes (see `bmr_eqx.erk_sparsities`); entries of
    `custom_sparsity_map` that name a layer keep their value and stay out of the budget.

    Raises `ValueError` for an empty dict or a default sparsity outside `[0, 1]`.
    """
    if not var_shape_dict:
        raise ValueError("Variable shape dictionary should not be empty")
    if default_sparsity is None or not 0 <= default_sparsity <= 1:
        raise ValueError(f"Default sparsity should be a value between 0 and 1, got {default_sparsity!r}.")
    custom = {k: v for k, v in (custom_sparsity_map or {}).items() if k in var_shape_dict}
    rest = {k: tuple(int(d) for d in s) for k, s in var_shape_dict.items() if k not in custom}
    out = dict(custom)
    if rest:
        out.update(erk_sparsities(rest, float(default_sparsity), power=float(erk_power_scale), kernel=bool(include_kernel)))
    logging.info("ERK sparsities: %s", out)
    return {k: out[k] for k in var_shape_dict}

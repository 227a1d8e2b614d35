"""`trainable(model)`: exactly the part of a bmr_eqx model that an optimizer should train."""

from typing import Any

import equinox as eqx
import jax

from ._select import PyTree


def _has_statistics(x: Any) -> bool:
    return isinstance(x, eqx.Module) and bool(getattr(type(x), "statistics_fields", ()))


def trainable_spec(model: PyTree) -> PyTree:
    """A filter spec (tree of bools) marking the trainable leaves of `model`: floating arrays,
    except masks (bool, never trainable) and posterior statistics (a `Posterior`'s `hess`)."""

    def spec(node: Any) -> Any:
        if not _has_statistics(node):
            return eqx.is_inexact_array(node)
        inner = jax.tree.map(spec, node, is_leaf=lambda x: x is not node and _has_statistics(x))
        for name in type(node).statistics_fields:
            inner = eqx.tree_at(lambda n, name=name: getattr(n, name), inner, replace_fn=lambda t: jax.tree.map(lambda _: False, t))
        return inner

    return jax.tree.map(spec, model, is_leaf=_has_statistics)


def trainable(model: PyTree) -> PyTree:
    """The trainable part of any model, bmr_eqx wrappers included: `eqx.filter(model, trainable_spec(model))`.

    Use it for `optimizer.init(bmr_eqx.trainable(model))` and as the `params` of `optimizer.update`.
    Masks (bool) and posterior statistics are replaced by None, so no optimizer ever decays or
    moves them.
    """
    return eqx.filter(model, trainable_spec(model))

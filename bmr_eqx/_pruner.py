"""The one pruner: a score, a selection, a structure, a schedule. Every named algorithm is a preset."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from ._groups import Coupled
from ._posterior import Posterior, data_curvature
from ._schedules import AbstractSchedule, NoUpdateSchedule, OneShotSchedule
from ._scores import AbstractScore, Leaf
from ._selection import AbstractSelection, AbstractStructure, Channel, Unit, Unstructured
from ._sites import Site, find_sites, join_path, no_sparse_error, replace_sites
from ._sparse import Sparse, check_masks
from ._tree import PyTree, path_str, where

_AUTODIFF_TRACERS = ("JVPTracer", "LinearizeTracer")  # the tracers of jax.jvp / jax.grad / jax.linearize


def _as_paths(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    out = tuple(value)
    if not all(isinstance(p, str) for p in out):
        raise TypeError(f"keep_dense must be leaf paths (strings like 'layers[2].weight'), got {value!r}.")
    return out


class _Entry(NamedTuple):
    """One prunable leaf during a mask computation: its site, its key in the site's masks, its Leaf."""

    site: int
    key: str
    leaf: Leaf  # stored weight and raw curvature; `scored_leaf` derives what scores see
    straight_through: bool
    posterior: Posterior | None
    hess_key: str | None  # the leaf's key in its posterior's hess

    def scored_leaf(self) -> Leaf:
        """The leaf as scores see it (computed inside the update branch): pruned entries at 0
        (unless straight-through), and the data curvature (the initial value removed) beside h."""
        leaf = self.leaf
        if not self.straight_through:
            leaf = leaf._replace(weight=where(leaf.mask, leaf.weight, 0))
        if self.posterior is not None:  # unused by a score, XLA drops it
            leaf = leaf._replace(data_hess=data_curvature(leaf.hess, self.posterior.init_weight, self.posterior.hess_init))
        return leaf


def _bias_partners(entries: list[_Entry], structure: Channel) -> dict[int, int]:
    """{index of a weight entry: index of its prunable bias} for `X.weight` / `X.bias` of one site
    whose bias has one entry per channel, when the channels are the outputs (axis 0)."""
    by_path = {(e.site, e.key): j for j, e in enumerate(entries)}
    out = {}
    for j, e in enumerate(entries):
        w = e.leaf.weight
        if e.key.endswith("weight") and w.ndim >= 1 and structure.axis % w.ndim == 0:
            b = by_path.get((e.site, e.key[: -len("weight")] + "bias"))
            if b is not None and entries[b].leaf.weight.size == w.shape[structure.axis % w.ndim]:
                out[j] = b
    return out


class Pruner(eqx.Module):
    """A pruning algorithm, composed of a score, a selection, a structure and a schedule.

    The named algorithms (`MagnitudePruning(sparsity=0.9, distribution="erk")`, `AdaptiveBMR(...)`,
    ...) are presets that build a `Pruner`. Use `update` inside a training step and `prune` for
    one-shot pruning; both accept any pytree holding `Sparse` models (a `Sparse`, a `Posterior` of
    one, a module with a `Sparse` encoder, a tuple of models).

    **Arguments:**

    - `score`: what is important (`Magnitude()`, `Saliency()`, `Random()`, `Evidence()`, ... or
      your own `AbstractScore`);
    - `selection`: which groups are kept (`TopK(sparsity, distribution)`, `NByM(n, m)`,
      `Threshold(value)`, `SpikeAndSlab()`, `DropAndGrow(grow, ...)`);
    - `structure`: which entries go together (`Unstructured()`, `Block(shape)`, `Channel(axis)`);
    - `schedule`: when masks are recomputed and at which fraction of the target
      (default `OneShotSchedule(0)`);
    - `monotone`: a pruned weight is never revived (its score is `-inf` at the next update);
    - `keep_dense`: paths of prunable leaves this pruner leaves dense (e.g. a classifier head,
      `("head.weight",)`), whatever the selection;
    - `straight_through`: the pruner expects `Sparse(..., straight_through=True)` models (pruned
      weights keep training and may come back) and raises otherwise; `update` recomputes the
      masks at every step from the schedule's first update step on, at the sparsity the schedule
      puts in force then.
    """

    score: AbstractScore
    selection: AbstractSelection
    structure: AbstractStructure = Unstructured()
    schedule: AbstractSchedule = OneShotSchedule(0)
    monotone: bool = False
    keep_dense: tuple[str, ...] = eqx.field(default=(), converter=_as_paths)
    straight_through: bool = False

    def __check_init__(self):
        for name, value, cls in (
            ("score", self.score, AbstractScore),
            ("selection", self.selection, AbstractSelection),
            ("structure", self.structure, AbstractStructure),
            ("schedule", self.schedule, AbstractSchedule),
        ):
            if not isinstance(value, cls):
                raise TypeError(f"Pruner {name} must be a bmr_eqx.{cls.__name__}, got {type(value).__name__}.")
        self.selection.check(self.structure)
        unknown = sorted(set(self._requires()) - {"grad", "key", "hess"})
        if unknown:
            raise ValueError(
                f"{type(self.score).__name__}.requires names {unknown}; a score may require 'grad', 'key' or 'hess'."
            )

    def _requires(self) -> set[str]:
        return set(self.score.requires) | set(self.selection.requires)

    # ---- what the score sees ---------------------------------------------------------------------

    def _entries(self, model: PyTree, grads: PyTree, key: PRNGKeyArray | None,
                 one_shot: bool = False, check_only: bool = False) -> tuple[list[Site], list[_Entry]]:
        """The sites and prunable leaves of `model`, after checking that the pruner can score them
        (`check_only`: the checks alone, no entries)."""
        sites = find_sites(model, grads)
        if not sites:
            raise no_sparse_error(model)
        # one-shot pruning only ranks by the score (a drop-and-grow selection grows nothing then)
        requires = set(self.score.requires) if one_shot else self._requires()
        score_name = type(self.score).__name__
        if "grad" in requires and grads is None:
            if "grad" in self.selection.requires:
                raise ValueError(
                    f"This pruner grows weights by their gradient ({type(self.selection.grow).__name__}): pass "
                    "grads= the gradient with respect to the masked weights, dense where the mask is 0: "
                    "`eqx.filter_grad(lambda m: loss(bmr_eqx.straight_through(m)))(model)`."
                )
            raise ValueError(f"The {score_name} score needs gradients: pass grads=eqx.filter_grad(loss)(model).")
        if "key" in requires and key is None:
            what = f"The {score_name} score" if "key" in self.score.requires else "This pruner's grow rule"
            raise ValueError(f"{what} needs a PRNG key: pass key=jax.random.key(...) (a new one at every step).")
        raw = []
        for i, site in enumerate(sites):
            check_masks(site.sparse.model, site.sparse.masks, site.prefix)
            if self.straight_through and not site.sparse.straight_through:
                raise ValueError(
                    f"This pruner recomputes straight-through masks: build the model at `{site.prefix or 'the root'}` "
                    "as `Sparse(model, straight_through=True)`."
                )
            if "hess" in requires and site.posterior is None:
                raise TypeError(
                    f"The {score_name} score reads a posterior, but the Sparse at `{site.prefix or 'the root'}` is "
                    "not in one: build `bmr_eqx.Posterior(bmr_eqx.Sparse(model), ess=...)` and train it with "
                    "bmr_eqx.ivon."
                )
            flat, treedef = jax.tree_util.tree_flatten_with_path(site.sparse.model)
            flat_g = None if site.grads is None else treedef.flatten_up_to(site.grads)
            for j, (p, w) in enumerate(flat):
                rel = path_str(p)
                m = site.sparse.masks.get(rel)
                if m is None:
                    continue
                g = None if flat_g is None else flat_g[j]
                path = join_path(site.prefix, rel)
                if "grad" in requires and g is None:
                    raise ValueError(f"grads has no gradient for the prunable leaf `{path}`.")
                post = site.posterior
                hk = None if post is None else join_path(site.hess_prefix, rel)
                raw.append((i, rel, path, w, m, g, post, hk))
        known = {r[2] for r in raw}
        unknown = sorted(set(self.keep_dense) - known)
        if unknown:
            raise ValueError(f"keep_dense names {unknown}, which are not prunable leaves; prunable leaves are {sorted(known)}.")
        if check_only:
            return sites, []
        keys = list(jax.random.split(key, len(raw))) if key is not None else [None] * len(raw)
        entries = [
            _Entry(i, rel, Leaf(path, w, m, g, k, None if post is None else post.hess[hk],
                                None if post is None else post.ess, None if post is None else post.weight_decay),
                   sites[i].sparse.straight_through, post, hk)
            for (i, rel, path, w, m, g, post, hk), k in zip(raw, keys)
        ]
        return sites, entries

    def _new_masks(self, entries: list[_Entry], sparsity_at: Any, step: Any = None) -> list[Array]:
        """New masks of `entries`, in order."""
        st = self.structure
        active = [j for j, e in enumerate(entries) if e.leaf.path not in self.keep_dense]
        partner = _bias_partners([entries[j] for j in active], st) if isinstance(st, Channel) else {}
        partner = {active[a]: active[b] for a, b in partner.items()}
        leaves = {j: entries[j].scored_leaf() for j in active}
        scores = {}
        for j in active:
            leaf = leaves[j]
            s = self.score(leaf)
            scores[j] = where(leaf.mask, s, -float("inf")) if self.monotone else s
        if isinstance(st, Coupled):
            return self._coupled_masks(entries, active, leaves, scores, sparsity_at, step)
        units, owners = [], []
        for j in active:
            if j in partner.values():
                continue
            leaf = leaves[j]
            st.check(tuple(leaf.weight.shape), leaf.path)
            groups = st.group(scores[j])
            if j in partner:
                groups = groups + scores[partner[j]].reshape(groups.shape)
            units.append(Unit(leaf, groups, st))
            owners.append(j)
        keeps = self.selection.select(units, sparsity_at, step) if units else []
        new: list[Array | None] = [None] * len(entries)
        for j, keep in zip(owners, keeps):
            if keep is None:  # the selection leaves this leaf alone
                continue
            new[j] = st.expand(keep, tuple(entries[j].leaf.weight.shape))
            if j in partner:
                new[partner[j]] = keep.reshape(entries[partner[j]].leaf.weight.shape)
        # keep_dense leaves and leaves a selection leaves alone keep their mask as it is
        return [e.leaf.mask if m is None else m for e, m in zip(entries, new)]

    def _coupled_masks(self, entries: list[_Entry], active: list[int], leaves: dict, scores: dict,
                       sparsity_at: Any, step: Any) -> list[Array]:
        st = self.structure
        by_path = {leaves[j].path: j for j in active}
        pairs = st.units({p: leaves[j] for p, j in by_path.items()}, {p: scores[j] for p, j in by_path.items()})
        keeps = self.selection.select([u for u, _ in pairs], sparsity_at, step) if pairs else []
        new = st.masks([(g, k) for (_, g), k in zip(pairs, keeps) if k is not None],
                       {p: leaves[j] for p, j in by_path.items()})
        return [new.get(e.leaf.path, e.leaf.mask) for e in entries]

    @staticmethod
    def _zeroed(entries: Sequence[_Entry], masks: Sequence[Array], old: Sequence[Array] | None,
                zero_straight_through: bool) -> list[Array]:
        """The weights of `entries` with their pruned entries set to 0 (a straight-through model's,
        which keep training, only with `zero_straight_through`) and, when the selection regrows
        (`old`: the masks before), the regrown ones too, so they start from 0."""
        out = []
        for j, (e, m) in enumerate(zip(entries, masks)):
            w = e.leaf.weight
            keep = m if zero_straight_through or not e.straight_through else None
            if old is not None:
                fresh = ~old[j] & m
                keep = ~fresh if keep is None else keep & ~fresh
            out.append(w if keep is None else where(keep, w, 0))
        return out

    @staticmethod
    def _put(model: PyTree, entries: Sequence[_Entry], masks: Sequence[Array], weights: Sequence[Array],
             regrown: Sequence[Array] | None = None) -> PyTree:
        """`model` with `masks` and `weights` of `entries` in place; `regrown` (masks of the weights
        grown back): their posterior curvature back to `hess_init`."""
        per_site: dict[int, dict[str, tuple[Array, Array]]] = {}
        for e, m, w in zip(entries, masks, weights):
            per_site.setdefault(e.site, {})[e.key] = (m, w)
        if regrown is not None:
            model = _reset_curvature(model, entries, regrown)

        def rebuild(i: int, sparse: Sparse) -> Sparse:
            new = per_site.get(i)
            if new is None:
                return sparse
            flat, treedef = jax.tree_util.tree_flatten_with_path(sparse.model)
            inner = treedef.unflatten([new[k][1] if (k := path_str(p)) in new else x for p, x in flat])
            masks_i = {**sparse.masks, **{k: m for k, (m, _) in new.items()}}
            return eqx.tree_at(lambda s: (s.model, s.masks), sparse, (inner, masks_i))

        return replace_sites(model, rebuild)

    # ---- public ----------------------------------------------------------------------------------

    def update(
        self,
        model: PyTree,
        step: int | Int[ArrayLike, ""],
        *,
        grads: PyTree = None,
        key: PRNGKeyArray | None = None,
    ) -> PyTree:
        """Recompute the masks if the schedule says so at `step`; otherwise return `model` unchanged.

        Works inside `eqx.filter_jit` with a traced `step`: the recomputation runs only on update
        steps, in a branch that updates the masks and the pruned weights in place, so the other
        steps cost nothing (no pass over the weights). Newly pruned weights are set to exactly 0 (a straight-through
        model keeps training them, so keeps their values); weights regrown by a `DropAndGrow`
        selection start at exactly 0, with their posterior curvature back at `hess_init`.

        **Arguments:**

        - `model`: any pytree holding `Sparse` models (also inside a `Posterior`).
        - `step`: the training step; pass a JAX integer inside `filter_jit` so it does not recompile.
        - `grads`: gradients of `model`, with its structure (needed by gradient-based scores).
        - `key`: a PRNG key (needed by random scores).

        **Returns:** the model with new masks (same structure).
        """
        if isinstance(self.schedule, NoUpdateSchedule):  # masks never change: nothing to check or compute
            if not find_sites(model):
                raise no_sparse_error(model)
            return model
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((model, step))):
            return self._update(model, step, grads, key)
        # called eagerly: nothing to do off the schedule's update steps (a Python int step is
        # answered in Python, so this neither waits for the device nor runs anything on it); on
        # them, compile the whole update once rather than op by op
        do = self._does_update(step)
        if not bool(do):
            self._entries(model, grads, key, check_only=True)  # the same checks as on an update step
            return model
        return _update_jit(self, model, jnp.asarray(step), grads, key)

    def _does_update(self, step: Any) -> Any:
        """Whether `update` recomputes masks at `step`."""
        return self.schedule.has_started(step) if self.straight_through else self.schedule.is_update_step(step)

    def _update(self, model: PyTree, step: Any, grads: PyTree, key: PRNGKeyArray | None) -> PyTree:
        sites, entries = self._entries(model, grads, key)
        step = jnp.asarray(step)
        # straight-through masks follow the dense weights at every step once the schedule has started;
        # the schedule sets the sparsity
        do = self._does_update(step)
        old = [e.leaf.mask for e in entries]
        regrows = self.selection.regrows

        # Only an update step changes masks, so the newly pruned (and regrown) weights are zeroed in
        # the same branch. The branch is a while loop run at most once, not a lax.cond: XLA updates a
        # loop's carry in place, while a cond copies every array its other branch passes through,
        # which would cost the steady-state step a pass over the pruned weights.
        def recompute(masks: list[Array], weights: list[Array]) -> tuple[list[Array], list[Array]]:
            now = [e._replace(leaf=e.leaf._replace(weight=w, mask=m)) for e, m, w in zip(entries, masks, weights)]
            new = self._new_masks(now, lambda t: self.schedule.sparsity(step, t), step)
            return new, self._zeroed(now, new, masks if regrows else None, zero_straight_through=False)

        weights = [e.leaf.weight for e in entries]
        if isinstance(do, jax.core.Tracer) and any(type(w).__name__ in _AUTODIFF_TRACERS for w in weights):
            # differentiated through (a while loop has no reverse-mode rule): a cond, copies and all
            new, weights = jax.lax.cond(do, lambda: recompute(old, weights), lambda: (old, weights))
        elif isinstance(do, jax.core.Tracer):
            def once(carry: tuple) -> tuple:
                return (jnp.zeros_like(carry[0]), *recompute(carry[1], carry[2]))

            _, new, weights = jax.lax.while_loop(lambda carry: carry[0], once, (do, old, weights))
        elif bool(do):
            new, weights = recompute(old, weights)
        else:
            new = old
        regrown = [n & ~o for n, o in zip(new, old)] if regrows else None
        return self._put(model, entries, new, weights, regrown=regrown)

    def prune(self, model: PyTree, *, grads: PyTree = None, key: PRNGKeyArray | None = None) -> PyTree:
        """One-shot pruning to the final target sparsity, ignoring the schedule.

        **Arguments:**

        - `model`: any pytree holding `Sparse` models; a tree with none (a plain trained model) is
          wrapped in `Sparse(model)` with the default prunable leaves first.
        - `grads`, `key`: as for `update`.

        **Returns:** the model with new masks and pruned weights set to exactly 0.
        """
        if not find_sites(model):
            if isinstance(model, Posterior):
                raise TypeError("Prune a Posterior of a Sparse model: `Posterior(Sparse(model), ess=...)`.")
            model = Sparse(model)
            grads = None if grads is None else Sparse(grads, masks={})
        if "hess" in self.score.requires:
            self._warn_if_blind(model)
        return _prune_jit(self, model, grads, key)

    def _warn_if_blind(self, model: PyTree) -> None:
        from ._curvature import warn_if_blind

        found = [(s.posterior, [join_path(s.hess_prefix, k) for k in s.sparse.masks if join_path(s.prefix, k) not in
                                self.keep_dense]) for s in find_sites(model) if s.posterior is not None]
        if found and not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves([p for p, _ in found])):
            warn_if_blind(found, getattr(self.score, "curvature", "posterior"))

    def _prune(self, model: PyTree, grads: PyTree, key: PRNGKeyArray | None) -> PyTree:
        _, entries = self._entries(model, grads, key, one_shot=True)
        new = self._new_masks(entries, lambda t: t)
        return self._put(model, entries, new, self._zeroed(entries, new, None, zero_straight_through=True))


def _reset_curvature(model: PyTree, entries: Sequence[_Entry], regrown: Sequence[Array]) -> PyTree:
    """`model` with the posterior curvature of regrown weights back at `hess_init`."""
    resets: dict[int, dict[str, Array]] = {}
    for e, g in zip(entries, regrown):
        if e.posterior is not None:
            resets.setdefault(id(e.posterior), {})[e.hess_key] = g
    if not resets:
        return model

    def fix(node: Any) -> Any:
        if not isinstance(node, Posterior) or id(node) not in resets:
            return node
        hess = dict(node.hess)
        for k, g in resets[id(node)].items():
            hess[k] = jnp.where(g, jnp.asarray(node.hess_init, hess[k].dtype), hess[k])
        return eqx.tree_at(lambda p: p.hess, node, hess)

    return jax.tree.map(fix, model, is_leaf=lambda x: isinstance(x, Posterior))


@eqx.filter_jit
def _update_jit(pruner: Pruner, model: PyTree, step: Array, grads: PyTree, key: PRNGKeyArray | None) -> PyTree:
    return pruner._update(model, step, grads, key)


@eqx.filter_jit
def _prune_jit(pruner: Pruner, model: PyTree, grads: PyTree, key: PRNGKeyArray | None) -> PyTree:
    # Compiled even when called eagerly: op-by-op top-k over a transformer's leaves takes seconds.
    return pruner._prune(model, grads, key)

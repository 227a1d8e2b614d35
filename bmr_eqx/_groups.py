"""Coupled groups: which slices of which leaves carry the same channel, found by tracing the model.

`dependency_groups` traces one call of the model (`jax.make_jaxpr`) and follows every axis of every
intermediate array through the operations. An axis is made of *atoms* (a reshape splits an axis into
factors, a concatenation into segments); atoms that must hold the same channel index are joined
(union-find): a layer's output axis with the next layer's contracted input axis, both sides of a
residual addition, a per-channel scale or running mean with the channel axis it multiplies, the
heads of an attention layer across its query, key, value and output projections. A group is what is
left of one class of joined atoms: the leaves that carry it, on which axis, and which entries of that
axis belong to which channel.

A class is a prunable group when removing one of its channels changes nothing but that channel's own
contribution: it must not reach the model's inputs or outputs, must not be reduced across channels
(a `LayerNorm` statistic, a softmax over channels, a contraction of two activations) and must not go
through an operation the tracer does not know; and something must read it (a weight contracted
against it: the *consumers* whose slices `compact` checks).
"""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jaxtyping import Array

from ._scores import Leaf
from ._selection import AbstractStructure, Unit
from ._tree import PyTree, path_str

_EXTERNAL, _MIXED = 1, 2

_ELEMENTWISE = frozenset("""
abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type copy copy_p cos cosh
custom_lin div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma digamma log
log1p logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n
shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor
sharding_constraint optimization_barrier square
""".split())
# operations through which a weight stays "that weight" for the zero test of its slices
_ZERO_PRESERVING = frozenset("transpose convert_element_type broadcast_in_dim squeeze copy copy_p neg mul "
                             "reduce_precision sharding_constraint rev".split())
_SOURCES = frozenset("iota random_bits random_seed random_wrap random_unwrap random_fold_in random_split "
                     "threefry2x32 rng_bit_generator rng_uniform".split())
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class Member(NamedTuple):
    """One leaf's share of a group: the leaf's plain `path`, the `axis` that carries the group, and
    `channels[i]`, the group channel that entry `i` of that axis belongs to (-1: another group's)."""

    path: str
    axis: int
    channels: tuple[int, ...]

    def indices(self, channel: int) -> np.ndarray:
        """The entries of `axis` that hold `channel`."""
        return np.flatnonzero(np.asarray(self.channels) == channel)


class Group(NamedTuple):
    """Slices of several leaves that hold the same `size` channels and are pruned or removed
    together (channel `c` is entry `members[k].indices(c)` of every member's axis). `consumers` are
    the (path, axis) of the weights that read the channels (contract them against an activation): a
    channel whose slices in every consumer are zero contributes nothing, and `compact` removes it
    from every member."""

    size: int
    members: tuple[Member, ...]
    consumers: tuple[tuple[str, int], ...]

    def __repr__(self) -> str:
        inner = ", ".join(f"{m.path}@{m.axis}" for m in self.members)
        readers = ", ".join(f"{p}@{a}" for p, a in self.consumers)
        return f"Group(size={self.size}, members=[{inner}], consumers=[{readers}])"


def weight_derived(name: str, eqn: Any, in_kinds: list, origin: dict) -> tuple[int, tuple] | None:
    """(leaf, the leaf axis of each output axis or None) when the output of `eqn` is one weight
    moved, cast, negated or scaled, so its zero slices are the weight's."""
    if name not in _ZERO_PRESERVING or len(eqn.outvars) != 1 or in_kinds.count("param") != 1 or "act" in in_kinds:
        return None
    v = eqn.invars[in_kinds.index("param")]
    if v not in origin:
        return None
    leaf, axes = origin[v]
    ndim = len(eqn.outvars[0].aval.shape)
    p = eqn.params
    if name == "transpose":
        return leaf, tuple(axes[i] for i in p["permutation"])
    if name == "broadcast_in_dim":
        out: list = [None] * ndim
        for i, d in enumerate(p["broadcast_dimensions"]):
            out[d] = axes[i]
        return leaf, tuple(out)
    if name == "squeeze":
        dropped = {d % len(axes) for d in p["dimensions"]}
        return leaf, tuple(a for i, a in enumerate(axes) if i not in dropped)
    if len(v.aval.shape) != ndim:  # an elementwise op with the weight as a broadcast scalar
        return None
    return leaf, axes


class _Node:
    """One factor or segment of an axis: an atom (`kind == "atom"`), or split into `children`
    (`"prod"`: a reshape, major first; `"sum"`: a concatenation)."""

    __slots__ = ("atom", "children", "kind", "size")

    def __init__(self, size: int, atom: int):
        self.size, self.atom, self.kind, self.children = size, atom, "atom", ()


class _Tracer:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.flags: list[int] = []
        self.consumers: list[set[int]] = []
        self.nodes: list[_Node] = []  # the node of each atom
        self.members: list[list[int]] = []  # the atoms of each class (valid at roots)

    # ---- atoms and classes -------------------------------------------------------------------------

    def atom(self, size: int) -> _Node:
        a = len(self.parent)
        node = _Node(size, a)
        self.parent.append(a)
        self.flags.append(0)
        self.consumers.append(set())
        self.nodes.append(node)
        self.members.append([a])
        return node

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.flags[ra] |= self.flags[rb]
        self.consumers[ra] |= self.consumers[rb]
        self.members[ra] += self.members[rb]
        self.members[rb] = []

    def split(self, node: _Node, sizes: list[int], kind: str) -> None:
        """Split the atom of `node`, and every atom joined to it, into parts of `sizes`."""
        root = self.find(node.atom)
        atoms, flags, consumers = list(self.members[root]), self.flags[root], set(self.consumers[root])
        parts = []
        for a in atoms:
            n = self.nodes[a]
            n.kind, n.children = kind, tuple(self.atom(s) for s in sizes)
            parts.append(n.children)
        for column in zip(*parts):
            for child in column:
                self.flags[child.atom], self.consumers[child.atom] = flags, set(consumers)
                self.union(column[0].atom, child.atom)

    def leaf_atoms(self, node: _Node) -> list[int]:
        if node.kind == "atom":
            return [node.atom]
        return [a for c in node.children for a in self.leaf_atoms(c)]

    def mark(self, nodes: Any, flag: int) -> None:
        for node in nodes:
            if node is not None:
                for a in self.leaf_atoms(node):
                    self.flags[self.find(a)] |= flag

    # ---- joining axes ------------------------------------------------------------------------------

    @staticmethod
    def _factors(node: _Node) -> list[_Node]:
        """`node` as a product of factors, major first (a segmented factor stays whole)."""
        if node.kind == "prod":
            return [f for c in node.children for f in _Tracer._factors(c)]
        return [node] if node.size != 1 else []

    def join(self, a: _Node, b: _Node) -> None:
        """Make the axes (or factors) `a` and `b` hold the same channels, index for index."""
        if a is b:
            return
        if a.kind == "atom" and b.kind == "atom":
            self.union(a.atom, b.atom)
        elif a.kind == b.kind == "sum" and [c.size for c in a.children] == [c.size for c in b.children]:
            for x, y in zip(a.children, b.children):
                self.join(x, y)
        elif "sum" in (a.kind, b.kind) and "atom" in (a.kind, b.kind):
            split, whole = (a, b) if a.kind == "sum" else (b, a)
            self.split(whole, [c.size for c in split.children], "sum")
            self.join(split, whole)
        elif "sum" in (a.kind, b.kind):  # a product against a concatenation: give up on both
            self.mark([a, b], _MIXED)
        else:
            self.join_sequences(self._factors(a), self._factors(b))

    def join_sequences(self, xs: list[_Node], ys: list[_Node]) -> None:
        """Join two products of factors (the axes of a reshape's input and output, row-major)."""
        xs, ys = list(xs), list(ys)
        while xs and ys:
            x, y = xs[0], ys[0]
            if x.size == y.size:
                self.join(x, y)
                xs.pop(0), ys.pop(0)
            elif x.size % y.size == 0 and x.kind == "atom":
                self.split(x, [y.size, x.size // y.size], "prod")
                xs[0:1] = list(x.children)
            elif y.size % x.size == 0 and y.kind == "atom":
                self.split(y, [x.size, y.size // x.size], "prod")
                ys[0:1] = list(y.children)
            else:
                self.mark(xs + ys, _MIXED)
                return
        self.mark(xs + ys, _MIXED)

    # ---- the walk over a jaxpr ---------------------------------------------------------------------

    def fresh(self, aval: Any) -> list[_Node]:
        return [self.atom(d) for d in getattr(aval, "shape", ())]

    def run(self, jaxpr: Any, env: dict, kind: dict, origin: dict) -> None:
        for eqn in jaxpr.eqns:
            ins = [None if isinstance(v, jex_core.Literal) else env.get(v) for v in eqn.invars]
            in_kinds = [("const" if isinstance(v, jex_core.Literal) else kind.get(v, "const")) for v in eqn.invars]
            name = eqn.primitive.name
            sub = next((eqn.params[k] for k in _CALLS if k in eqn.params), None)
            if sub is not None and name not in ("while", "scan", "cond"):
                sub = getattr(sub, "jaxpr", sub)
                sub_env = {sv: n for sv, n in zip(sub.invars, ins) if n is not None}
                sub_kind = dict(zip(sub.invars, in_kinds))
                sub_origin = {sv: origin[v] for sv, v in zip(sub.invars, eqn.invars) if not isinstance(v, jex_core.Literal) and v in origin}
                for cv in sub.constvars:
                    sub_env[cv], sub_kind[cv] = self.fresh(cv.aval), "const"
                self.run(sub, sub_env, sub_kind, sub_origin)
                for v, sv in zip(eqn.outvars, sub.outvars):
                    if isinstance(sv, jex_core.Literal):
                        env[v], kind[v] = self.fresh(v.aval), "const"
                        continue
                    env[v], kind[v] = sub_env.get(sv, self.fresh(sv.aval)), sub_kind.get(sv, "const")
                    if sv in sub_origin:
                        origin[v] = sub_origin[sv]
                continue
            outs = [self.fresh(v.aval) for v in eqn.outvars]
            out_kind = "act" if "act" in in_kinds else ("param" if "param" in in_kinds else "const")
            for v, o in zip(eqn.outvars, outs):
                env[v], kind[v] = o, out_kind
            derived = weight_derived(name, eqn, in_kinds, origin)
            if derived is not None:
                origin[eqn.outvars[0]] = derived
            self.rule(name, eqn, ins, in_kinds, outs, origin)

    def rule(self, name: str, eqn: Any, ins: list, in_kinds: list, outs: list, origin: dict) -> None:
        p = eqn.params
        if name in _SOURCES:
            return
        if name in _ELEMENTWISE:
            for o in outs:
                for x in ins:
                    if x is not None and len(x) == len(o):
                        for xa, oa in zip(x, o):
                            if xa.size == oa.size:
                                self.join(xa, oa)
            return
        x, o = (ins[0] if ins else None), (outs[0] if outs else None)
        if name == "broadcast_in_dim":
            for i, d in enumerate(p["broadcast_dimensions"]):
                if x[i].size == o[d].size:
                    self.join(x[i], o[d])
        elif name == "transpose":
            for i, d in enumerate(p["permutation"]):
                self.join(x[d], o[i])
        elif name == "squeeze":
            kept = [a for i, a in enumerate(x) if i not in {d % len(x) for d in p["dimensions"]}]
            for xa, oa in zip(kept, o):
                self.join(xa, oa)
        elif name == "expand_dims":
            kept = [a for i, a in enumerate(o) if i not in set(p["dimensions"])]
            for xa, oa in zip(x, kept):
                self.join(xa, oa)
        elif name == "reshape":
            self.join_sequences([f for a in x for f in self._factors(a)], [f for a in o for f in self._factors(a)])
        elif name == "rev":
            for i, (xa, oa) in enumerate(zip(x, o)):
                if i in p["dimensions"]:
                    self.mark([xa, oa], _MIXED)
                else:
                    self.join(xa, oa)
        elif name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                      "argmax", "argmin"):
            axes = {int(a) for a in p["axes"]}
            self.mark([a for i, a in enumerate(x) if i in axes], _MIXED)
            for xa, oa in zip([a for i, a in enumerate(x) if i not in axes], o):
                self.join(xa, oa)
        elif name == "concatenate":
            d = p["dimension"]
            self.split(o[d], [a[d].size for a in ins], "sum")
            for a in ins:
                for i, (xa, oa) in enumerate(zip(a, o)):
                    if i != d:
                        self.join(xa, oa)
            for a, part in zip(ins, o[d].children):
                self.join(a[d], part)
        elif name == "split":
            d = p["axis"]
            self.split(x[d], [out[d].size for out in outs], "sum")
            for out, part in zip(outs, x[d].children):
                for i, (xa, oa) in enumerate(zip(x, out)):
                    self.join(part if i == d else xa, oa)
        elif name == "dot_general":
            self.dot_general(eqn, ins, in_kinds, o, origin)
        elif name == "conv_general_dilated":
            self.conv(eqn, ins, in_kinds, o, origin)
        else:  # an operation this tracer does not follow: nothing it touches can be removed
            self.mark([a for n in ins if n is not None for a in n] + [a for n in outs for a in n], _MIXED)

    def contraction(self, eqn: Any, pairs: list[tuple[_Node, _Node]], axes: tuple[list, list], in_kinds: list,
                    origin: dict) -> None:
        """Join contracted axes and note who reads them: a weight contracted against an activation
        is a consumer of the channel; two activations (or a derived weight) mix it."""
        for a, b in pairs:
            self.join(a, b)
        side = {("act", "param"): 1, ("param", "act"): 0}.get(tuple(in_kinds[:2]))
        weight = None if side is None else origin.get(eqn.invars[side])
        for k, pair in enumerate(pairs):
            leaf_axis = None if weight is None else weight[1][axes[side][k]]
            for atom in self.leaf_atoms(pair[0]):
                root = self.find(atom)
                if leaf_axis is None:
                    self.flags[root] |= _MIXED
                else:
                    self.consumers[root].add((weight[0], leaf_axis))

    def dot_general(self, eqn: Any, ins: list, in_kinds: list, o: list, origin: dict) -> None:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        x, y = ins
        self.contraction(eqn, [(x[i], y[j]) for i, j in zip(lc, rc)], (list(lc), list(rc)), in_kinds, origin)
        free_x = [a for i, a in enumerate(x) if i not in set(lc) | set(lb)]
        free_y = [a for i, a in enumerate(y) if i not in set(rc) | set(rb)]
        for (i, j), oa in zip(zip(lb, rb), o):
            self.join(x[i], y[j])
            self.join(x[i], oa)
        for xa, oa in zip(free_x + free_y, o[len(lb):]):
            self.join(xa, oa)

    def conv(self, eqn: Any, ins: list, in_kinds: list, o: list, origin: dict) -> None:
        p = eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        x, w = ins
        if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:  # grouped: not followed
            self.mark(list(x) + list(w) + list(o), _MIXED)
            return
        self.contraction(eqn, [(x[lhs_spec[1]], w[rhs_spec[1]])], ([lhs_spec[1]], [rhs_spec[1]]), in_kinds, origin)
        self.join(x[lhs_spec[0]], o[out_spec[0]])
        self.join(w[rhs_spec[0]], o[out_spec[1]])
        self.mark([x[d] for d in lhs_spec[2:]] + [w[d] for d in rhs_spec[2:]] + [o[d] for d in out_spec[2:]], _MIXED)

    def channels(self, node: _Node) -> dict[int, np.ndarray]:
        """{class: the channel of each entry of the axis `node` (-1 where it is another class's)}."""
        if node.kind == "atom":
            return {self.find(node.atom): np.arange(node.size)}
        out: dict[int, np.ndarray] = {}
        if node.kind == "prod":
            idx, stride = np.arange(node.size), node.size
            for c in node.children:
                stride //= c.size
                digit = (idx // stride) % c.size
                for k, ch in self.channels(c).items():
                    out[k] = ch[digit]
        else:
            offset = 0
            for c in node.children:
                for k, ch in self.channels(c).items():
                    full = np.full(node.size, -1)
                    full[offset:offset + c.size] = ch
                    out[k] = full
                offset += c.size
        return out


def _is_state(x: Any) -> bool:
    return isinstance(x, eqx.nn.State)


def _state_names(model: PyTree, state: Any) -> dict[int, str]:
    """{id of a leaf of `state`: `state(<path of its StateIndex in model>)<index>`}."""
    names = {}
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    for kp, index in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_index)[0]:
        if is_index(index):
            try:
                value = state.get(index)
            except Exception:  # a StateIndex whose value lives in another State
                continue
            for kp2, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
                names[id(leaf)] = f"state({path_str(kp)}){jax.tree_util.keystr(tuple(kp2))}"
    return names


def trace_groups(model: PyTree, args: tuple, kwargs: dict) -> tuple[list[Group], list[tuple[str, Any]]]:
    """The prunable groups of `model(*args, **kwargs)` (a plain model), and the model's array
    leaves and the `eqx.nn.State` leaves among the arguments as (path, leaf) pairs: the paths the
    groups name (state leaves are named `state` + their path in the state)."""
    model = eqx.nn.inference_mode(model)
    params, static = eqx.partition(model, eqx.is_array)
    dyn_args, static_args = eqx.partition((args, kwargs), eqx.is_array)
    flat_p, _ = jax.tree_util.tree_flatten_with_path(params)
    flat_a, _ = jax.tree_util.tree_flatten_with_path(dyn_args, is_leaf=_is_state)

    def call(p: PyTree, a: PyTree) -> tuple:
        out = eqx.combine(p, static)(*eqx.combine(a, static_args)[0], **eqx.combine(a, static_args)[1])
        return eqx.partition(out, lambda x: not _is_state(x), is_leaf=_is_state)

    closed, shapes = jax.make_jaxpr(call, return_shape=True)(params, dyn_args)
    jaxpr = closed.jaxpr
    t = _Tracer()
    env: dict = {}
    kind: dict = {}
    origin: dict = {}
    named: list[tuple[str, Any, Any]] = []  # (path, leaf, invar)
    invars = iter(jaxpr.invars)
    for kp, leaf in flat_p:
        v = next(invars)
        env[v], kind[v], origin[v] = t.fresh(v.aval), "param", (len(named), tuple(range(leaf.ndim)))
        named.append((path_str(kp), leaf, v))
    for kp, node in flat_a:
        if _is_state(node):
            names = _state_names(model, node)
            for kp2, leaf in jax.tree_util.tree_flatten_with_path(node)[0]:
                v = next(invars)
                env[v], kind[v] = t.fresh(v.aval), "param"
                named.append((names.get(id(leaf), "state" + jax.tree_util.keystr(tuple(kp2))), leaf, v))
        else:
            v = next(invars)
            env[v], kind[v] = t.fresh(v.aval), "act"
            t.mark(env[v], _EXTERNAL)
    for cv in jaxpr.constvars:
        env[cv], kind[cv] = t.fresh(cv.aval), "const"
    t.run(jaxpr, env, kind, origin)
    for v in jaxpr.outvars[: len(jax.tree.leaves(shapes[0]))]:
        if not isinstance(v, jex_core.Literal):
            t.mark(env[v], _EXTERNAL)

    per_class: dict[int, list[Member]] = {}
    for path, _, v in named:
        for axis, node in enumerate(env[v]):
            for root, ch in t.channels(node).items():
                per_class.setdefault(t.find(root), []).append(Member(path, axis, tuple(int(c) for c in ch)))
    groups = []
    for root, members in per_class.items():
        root = t.find(root)
        size = t.nodes[root].size
        if t.flags[root] or not t.consumers[root] or size < 2:
            continue
        consumers = tuple(sorted((named[i][0], axis) for i, axis in t.consumers[root]))
        groups.append(Group(size, tuple(members), consumers))
    order = {path: i for i, (path, _, _) in enumerate(named)}
    groups.sort(key=lambda g: min((order[m.path], m.axis) for m in g.members))
    return groups, [(path, leaf) for path, leaf, _ in named]


def plain_model(model: PyTree) -> PyTree:
    """`model` with every bmr_eqx wrapper replaced by its plain model, pruned entries at 0."""
    from ._sites import unwrap
    from ._sparse import apply_masks

    return unwrap(model, lambda sparse, _: apply_masks(sparse.model, sparse.masks))


def dependency_groups(model: PyTree, *example_args: Any, **example_kwargs: Any) -> list[Group]:
    """The groups of leaf slices that hold the same channels, found by tracing one call.

    Traces `model(*example_args, **example_kwargs)` (with `jax.make_jaxpr`, in inference mode, so
    dropout is off and `BatchNorm` reads its running statistics) and follows every axis through the
    computation. Each `Group` lists the leaves that carry one set of channels and where: a `Linear`'s
    output rows, its bias, and the next layer's input columns; a convolution's filters, the
    `BatchNorm` scale, shift and running statistics (in the `eqx.nn.State` among the arguments)
    that act on them, and the next convolution's input channels; every layer that writes to the
    same residual stream; the heads of an `eqx.nn.MultiheadAttention` (query, key, value and output
    projections, `qk_size` or `vo_size` entries per head). Channels that reach the model's inputs or
    outputs, are normalised across (`LayerNorm`) or pass through an operation the tracer does not
    follow (`lax.scan`, grouped convolutions, gathers) belong to no group.

    Prune along the groups with `structure=bmr_eqx.Coupled(groups)`, and remove what was pruned
    with `bmr_eqx.compact`.

    **Arguments:**

    - `model`: the model, plain or holding `Sparse` / `Posterior` wrappers (their plain model is
      traced; paths are plain paths, as in `Sparse.masks`).
    - `*example_args`, `**example_kwargs`: one call's arguments, as the model takes them (one
      example for a per-example Equinox model; include the `eqx.nn.State` for `BatchNorm`).

    **Returns:** a list of `Group`s, in the order of their first leaf.
    """
    groups, _ = trace_groups(plain_model(model), example_args, example_kwargs)
    return groups


def _pool(values: Array, member: Member, size: int) -> Array:
    """Per-channel sums of `values` (a leaf's scores) over `member`'s slices."""
    axis = member.axis
    per_index = jnp.sum(values, axis=tuple(a for a in range(values.ndim) if a != axis))
    channels = np.asarray(member.channels)
    inside = np.flatnonzero(channels >= 0)
    return jnp.zeros(size, per_index.dtype).at[channels[inside]].add(per_index[inside])


def _expand(keep: Array, member: Member, shape: tuple[int, ...]) -> Array:
    """A mask of `shape`: False on the slices of `member` whose channel `keep` drops."""
    channels = np.asarray(member.channels)
    along = jnp.where(channels >= 0, keep[np.maximum(channels, 0)], True)
    return jnp.broadcast_to(jnp.expand_dims(along, tuple(a for a in range(len(shape)) if a != member.axis)), shape)


class Coupled(AbstractStructure):
    """Prune whole channels of coupled groups (from `bmr_eqx.dependency_groups`): channel `c` of a
    group is ranked by the sum of its members' scores over their slices (the L1 norm of all the
    weights that carry it for magnitude, the joint ΔF for BMR evidence), and pruning it masks the
    slice of every member, so a residual stream or an attention head is pruned consistently and
    `bmr_eqx.compact` can remove it. A selection sees one unit per group (`TopK(sparsity)` prunes
    that fraction of every group's channels; `Threshold` / `SpikeAndSlab` let the scores decide).
    Members that are not prunable leaves of the model (a `BatchNorm` scale, running statistics)
    add nothing and are not masked; prunable leaves in no group keep their masks.

    **Arguments:** `groups`, a list of `Group`s.
    """

    groups: tuple[Group, ...] = eqx.field(static=True, converter=tuple)

    def __check_init__(self):
        if not all(isinstance(g, Group) for g in self.groups):
            raise TypeError("Coupled takes the groups that bmr_eqx.dependency_groups(model, *example_args) returns.")

    def units(self, leaves: dict[str, Leaf], scores: dict[str, Array]) -> list[tuple[Unit, Group]]:
        """One selection unit per group with at least one prunable member (`leaves`, `scores` by path)."""
        out = []
        for i, g in enumerate(self.groups):
            present = [m for m in g.members if m.path in leaves]
            if not present:
                continue
            total = sum(_pool(scores[m.path].astype(jnp.float32), m, g.size) for m in present)
            kept = sum(_pool(leaves[m.path].mask.astype(jnp.int32), m, g.size) for m in present) > 0
            first = leaves[present[0].path]
            leaf = first._replace(path=f"group {i} ({present[0].path}, axis {present[0].axis})",
                                  weight=jnp.zeros(g.size, first.weight.dtype), mask=kept)
            out.append((Unit(leaf, total, self), g))
        return out

    @staticmethod
    def masks(kept: list[tuple[Group, Array]], leaves: dict[str, Leaf]) -> dict[str, Array]:
        """{path: mask} of every prunable member, from each group's channel keep flags."""
        out: dict[str, Array] = {}
        for g, keep in kept:
            for m in g.members:
                if m.path in leaves:
                    shape = tuple(leaves[m.path].weight.shape)
                    mask = _expand(keep, m, shape)
                    out[m.path] = mask if m.path not in out else out[m.path] & mask
        return out

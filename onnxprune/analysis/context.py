"""The state per-op rules write into while the graph is walked.

Every channel that exists in the graph is an *element* (an integer id). A channel
space (tensor, axis) holds an array of element ids, one per index along the axis;
ops that only move channels around (elementwise ops, Concat, Split, Transpose,
Flatten, ...) pass element arrays through, so a channel keeps its id wherever it
flows. Where two spaces must lose the same channels (a residual Add), their
elements are unioned. After the walk, the union-find roots are the atomic pruning
*units*.

Rules also record what has to change when units are removed: weight slices
(``ParamRef``), mixing reads for the masked reference (``ConsumerRef``), attribute and
shape-constant fix-ups (one frozen ``Fixup`` subclass per kind), and the reasons a unit
cannot be pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxprune.graph import Dim, GraphIndex

Role = Literal["producer", "consumer", "param"]


class UnionFind:
    """Union-find over integer ids, growing on demand."""

    def __init__(self) -> None:
        self.parent = np.zeros(0, dtype=np.int64)
        self._size = 0

    def grow(self, n: int) -> np.ndarray:
        start = self._size
        self._size += n
        if self._size > len(self.parent):
            new = np.arange(max(self._size, 2 * len(self.parent)), dtype=np.int64)
            new[: len(self.parent)] = self.parent
            self.parent = new
        return np.arange(start, start + n, dtype=np.int64)

    def __len__(self) -> int:
        return self._size

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return int(root)

    def _find_many(self, x: np.ndarray) -> np.ndarray:
        """Roots of many ids at once (vectorised), compressing their paths."""
        p = self.parent
        r = p[x]
        while True:
            q = p[r]
            if np.array_equal(q, r):
                break
            r = q
        p[x] = r
        return r

    def same(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether a[i] and b[i] are in one set for every i (the same units, in order)."""
        return len(a) == len(b) and bool(np.array_equal(self._find_many(a), self._find_many(b)))

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union a[i] with b[i] for every i. The root of a set is always its smallest id
        (the larger root is linked under the smaller), so the roots do not depend on the
        order of unions; conflicting links of one round are resolved by the next."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        while True:
            ra, rb = self._find_many(a), self._find_many(b)
            differ = ra != rb
            if not differ.any():
                return
            ra, rb = ra[differ], rb[differ]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            # several links from one root in a round: keep the smallest target, so that a
            # root is only ever linked under a smaller root
            order = np.lexsort((lo, hi))
            hi, lo = hi[order], lo[order]
            first = np.ones(len(hi), dtype=bool)
            first[1:] = hi[1:] != hi[:-1]
            self.parent[hi[first]] = lo[first]
            a, b = a[differ], b[differ]

    def roots(self) -> np.ndarray:
        """The root of every element, by pointer jumping (vectorised)."""
        p = self.parent[: self._size].copy()
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


@dataclass(frozen=True)
class ParamRef:
    """Along ``axis`` of constant input ``slot`` of ``node``, index i belongs to element elems[i]."""

    node: str
    slot: int
    axis: int
    elems: np.ndarray
    role: Role
    is_weight: bool  # counted by magnitude criteria (weights and norm scales, not biases/statistics)


@dataclass(frozen=True)
class ConsumerRef:
    """``node`` reads input ``slot`` mixing channels along ``axis`` (where the masked reference masks)."""

    node: str
    slot: int
    axis: int
    elems: np.ndarray


FIXUP_KINDS: list[type[Fixup]] = []
"""Every fixup kind, in definition order (each subclass of ``Fixup`` adds itself).
``rewrite.base.check_fixup_handlers`` refuses a pipeline in which one has no handler."""


@dataclass(frozen=True, eq=False)
class Fixup:
    """A non-weight edit (attribute or shape constant) on ``node`` a pass must make when
    channels go. One frozen subclass per kind; a pass handles a kind in its ``fixup_handlers``."""

    node: str

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        FIXUP_KINDS.append(cls)


@dataclass(frozen=True, eq=False)
class GroupCount(Fixup):
    """A depthwise Conv / ConvTranspose: its ``group`` becomes the kept count of ``elems``."""

    elems: np.ndarray


@dataclass(frozen=True, eq=False)
class SplitSizes(Fixup):
    """A Split: output i's size becomes the kept count of ``parts[i]``."""

    parts: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class SliceBounds(Fixup):
    """A Slice on a channel axis (entry ``position`` of its starts/ends): ``elems[start:stop]``
    is kept; the bounds become the kept counts before ``start`` and up to ``stop``."""

    position: int
    elems: np.ndarray
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class ShapeEntry(Fixup):
    """Entry ``index`` of the constant shape input ``slot`` (a Reshape / Expand target, Resize
    sizes) counts ``elems``: it becomes their kept count."""

    slot: int
    index: int
    elems: np.ndarray


@dataclass(frozen=True)
class SpaceRecord:
    tensor: str
    axis: int
    elems: np.ndarray


@dataclass(frozen=True)
class BlockRecord:
    elems: np.ndarray
    reason: str
    node: str | None
    op: str | None


class RuleContext:
    """What a rule sees and writes. One instance per analysis."""

    def __init__(self, index: GraphIndex, *, prune_hidden: bool = False, allow_interface_change: bool = False) -> None:
        self.index = index
        self.prune_hidden = prune_hidden  # LayerNorm over the hidden axis passes (approximate) channels
        self.allow_interface_change = allow_interface_change  # a KV cache's inputs / outputs may change shape
        self.uf = UnionFind()
        self.live: dict[str, dict[int, np.ndarray]] = {}
        self.spaces: list[SpaceRecord] = []
        self.params: list[ParamRef] = []
        self.consumers: list[ConsumerRef] = []
        self.fixups: list[Fixup] = []
        self.blocks: list[BlockRecord] = []
        self.derived_shapes: dict[str, tuple[Dim, ...]] = {}
        self.mac_axes: dict[str, list[np.ndarray]] = {}  # node -> spaces its MACs scale with (no weights)
        self.mac_of: dict[str, str] = {}  # node holding a weight -> the node whose MACs it scales (Transpose -> MatMul)
        self.node: onnx.NodeProto | None = None  # the node being analysed

    # -- shapes and constants ----------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        shape = self.index.shape(name)
        return shape if shape is not None else self.derived_shapes.get(name)

    def derive_shape(self, name: str, shape: tuple[Dim, ...]) -> None:
        """A shape a rule worked out where shape inference gave up (a computed Reshape target)."""
        if self.index.shape(name) is None:
            self.derived_shapes[name] = shape

    def dim(self, name: str, axis: int) -> Dim:
        s = self.shape(name)
        return None if s is None or axis >= len(s) else s[axis]

    def const(self, name: str) -> np.ndarray | None:
        return self.index.const(name) if name else None

    def is_const(self, name: str) -> bool:
        return bool(name) and self.index.is_const(name)

    # -- channel spaces --------------------------------------------------
    def spaces_of(self, tensor: str) -> dict[int, np.ndarray]:
        """Live channel spaces of a tensor: axis -> element ids."""
        return self.live.get(tensor, {})

    def set_space(self, tensor: str, axis: int, elems: np.ndarray) -> None:
        existing = self.live.setdefault(tensor, {}).get(axis)
        if existing is not None:
            self.union(existing, elems)
            return
        self.live[tensor][axis] = elems
        self.spaces.append(SpaceRecord(tensor, axis, elems))

    def new_elements(self, n: int) -> np.ndarray:
        return self.uf.grow(n)

    def opaque(self, tensor: str, axis: int, size: int, reason: str) -> np.ndarray:
        """Elements for channels that no prunable op produced (a graph input, an unsupported op)."""
        elems = self.new_elements(size)
        self.block(elems, reason)
        self.set_space(tensor, axis, elems)
        return elems

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise ValueError(f"cannot couple channel spaces of sizes {len(a)} and {len(b)}")
        self.uf.union_arrays(a, b)

    # -- records ---------------------------------------------------------
    def block(self, elems: np.ndarray, reason: str) -> None:
        node = self.node
        self.blocks.append(BlockRecord(elems, reason, node.name if node else None, node.op_type if node else None))

    def block_all_inputs(self, reason: str) -> None:
        """Block every live channel space read by the current node."""
        assert self.node is not None
        for name in self.node.input:
            for elems in self.spaces_of(name).values():
                self.block(elems, reason)

    def param(self, slot: int, axis: int, elems: np.ndarray, role: Role, *, is_weight: bool = False,
              at: str | None = None) -> None:
        """A constant input (of the current node, or of node ``at``) sliced along ``axis``."""
        assert self.node is not None
        self.params.append(ParamRef(at or self.node.name, slot, axis, elems, role, is_weight))

    def consumer(self, slot: int, axis: int, elems: np.ndarray) -> None:
        assert self.node is not None
        self.consumers.append(ConsumerRef(self.node.name, slot, axis, elems))

    def fixup(self, kind: type[Fixup], *, at: str | None = None, **fields: Any) -> None:
        """Record an edit of type ``kind`` (a ``Fixup`` subclass, with its ``fields``) on the
        current node (or on node ``at``, e.g. a Concat building a shape)."""
        assert self.node is not None
        self.fixups.append(kind(at or self.node.name, **fields))

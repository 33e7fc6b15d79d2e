"""Undo one recovery edit without copying the whole model.

A recovery step edits the node it stands at: it rewrites constants that node, or a node
reading its output (the Add holding a MatMul's bias), reads; it appends initializers,
inserts nodes and value infos. ``Snapshot`` keeps what such an edit can change (the node
list, the value infos, the number of initializers and copies of the initializers those
nodes read) and ``restore`` puts the model back byte for byte: on a large model (a decoder
LM's 500 MB of weights) this replaces a copy of every weight per step. An edit of any other
initializer is not undone: ``touching`` tells which edits a snapshot covers.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxprune.graph import GraphIndex

# the built-in methods (``recovery.methods``) whose edits stay within what a snapshot keeps
COVERED = frozenset({"bias", "lstsq", "scale", "bn", "temperature"})


class _GraphState:
    """The node list, value infos and initializer count of ``model`` when made, and how to put
    them back with the given initializers (index -> the copy to restore)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes = [_copy(n, onnx.NodeProto) for n in graph.node]
        self.value_info = [_copy(v, onnx.ValueInfoProto) for v in graph.value_info]
        self.count = len(graph.initializer)

    def _put_back(self, initializers: Mapping[int, onnx.TensorProto]) -> onnx.ModelProto:
        graph = self.model.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.value_info[:]
        graph.value_info.extend(self.value_info)
        del graph.initializer[self.count:]
        for k, tensor in initializers.items():
            graph.initializer[k].CopyFrom(tensor)
        return self.model


class Snapshot(_GraphState):
    """What an edit at node ``name`` of ``model`` can change (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        index = GraphIndex(model)
        node = index.nodes[name]
        readers = [node, *(user for out in node.output if out for user, _ in index.users(out))]
        wanted = {t for n in readers for t in n.input if t in index.initializers}
        super().__init__(model)
        self.initializers = {k: _copy(t, onnx.TensorProto) for k, t in enumerate(model.graph.initializer)
                             if t.name in wanted}

    def restore(self) -> onnx.ModelProto:
        """Put the model back as it was when the snapshot was taken; returns it."""
        return self._put_back(self.initializers)


class Edits(_GraphState):
    """Every change the committed steps made to ``model``, to put it back as it was: the node
    list, value infos and initializer count at the start, and the first copy (a committed
    step's ``Snapshot``) of every initializer a step changed. Recovery edits the caller's
    pruned model in place with it instead of working on a copy of every weight; a decoder
    LM's refitted layers are a fraction of its weights."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self.originals: dict[int, onnx.TensorProto] = {}

    def keep(self, snapshot: Snapshot) -> list[int]:
        """Record a step about to edit the model (taken before it does): its snapshot's
        initializers not changed before are originals. Returns their indices (``forget`` them
        when the step is undone)."""
        added = [k for k in snapshot.initializers if k < self.count and k not in self.originals]
        for k in added:
            self.originals[k] = snapshot.initializers[k]
        return added

    def forget(self, added: list[int]) -> None:
        """Drop what ``keep`` recorded for a step that was undone (those are unchanged again)."""
        for k in added:
            del self.originals[k]

    def restore(self) -> onnx.ModelProto:
        """Put the model back as it was when this record began; returns it."""
        return self._put_back(self.originals)


def touching(method: str) -> bool:
    """Whether a snapshot covers what ``method``'s edits change (else copy the whole model)."""
    return method in COVERED


def _copy(message, kind):  # noqa: ANN001, ANN202
    out = kind()
    out.CopyFrom(message)
    return out

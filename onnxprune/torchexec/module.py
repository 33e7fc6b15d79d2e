"""OnnxModule: an ONNX graph executed node by node with torch ops (differentiable)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxprune.errors import ModelRunError
from onnxprune.io.external import PageRelease, is_external, read_tensor, source_of, tensor_nbytes
from onnxprune.torchexec.convert import LOW_TORCH_FLOATS, float32_node, to_numpy, to_torch
from onnxprune.torchexec.ops import Node, OpFn, implementation

# Constant inputs read as weights: float initializers there are trainable by default.
WEIGHT_SLOTS: dict[str, set[int]] = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": {0, 1},
    "BatchNormalization": {1, 2}, "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2},
    "GroupNormalization": {1, 2}, "PRelu": {1}, "Add": {0, 1}, "Mul": {0, 1},
    "LSTM": {1, 2, 3, 7}, "GRU": {1, 2, 3}, "RNN": {1, 2, 3},
}
# Ops that only re-lay a constant out: a weight read through them is still a weight.
_PASS_THROUGH = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast", "Identity", "Flatten"}
# Elementwise constants are trainable only when they are per-channel (not scalars such as
# the 0.5 of a decomposed activation or an epsilon).
_ELEMENTWISE = {"Add", "Mul"}
# Float constants that steer an op rather than feed data into it: buffers, not parameters.
CONTROL_SLOTS: dict[str, set[int]] = {"Resize": {1, 2, 3}, "Upsample": {1}, "Dropout": {1, 2}}
STATIC_MAX_ELEMS = 1 << 16  # constant buffers up to this size are also kept as numpy (no device sync)
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class _Step:
    node: Node
    fn: OpFn
    inputs: list[str]
    outputs: list[str]
    free: list[str]  # tensors not read after this step


@dataclass(frozen=True)
class _Slot:
    container: str  # "params" or "consts"
    key: str
    source: str  # "initializer" or "constant" (a Constant node's output)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where every input exists before it is read (stable)."""
    known = set(available)
    pending, order = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(not name or name in known for name in node.input):
                order.append(node)
                known.update(o for o in node.output if o)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            node = rest[0]
            missing = [name for name in node.input if name and name not in known]
            raise ValueError(f"node '{node.name}' ({node.op_type}) reads {missing}, which nothing produces")
        pending = rest
    return order


def _run_failure(node: Node, args: list[torch.Tensor | None], exc: Exception, batch: int | None) -> str:
    """One line: the node, the shapes it was given, torch's reason, and what usually causes it
    (``batch``: the batch size of the model's first input)."""
    shapes = ", ".join("-" if a is None else str(list(a.shape)) for a in args)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = (" (an export traced at batch 1 may run only at batch 1: try --batch-size 1)"
            if batch is not None and batch > 1 else "")
    return (f"node '{node.name}' ({node.op_type}) cannot run on inputs of shapes {shapes}: {reason}; "
            f"the model does not compute on these inputs{hint}")


class OnnxModule(torch.nn.Module):
    """Executes an ONNX graph node by node with torch ops.

    Float initializers (and float ``Constant`` node values) are ``nn.Parameter``s; by
    default only those read as weights/biases (Conv, ConvTranspose, Gemm, MatMul,
    normalisation scale/bias, PRelu, recurrent weights, per-channel Add/Mul constants)
    require grad, ``trainable(name)`` decides otherwise. Integer, boolean and control
    constants (Resize scales, ...) are buffers and are treated as constant. Every tensor
    is addressed by its ONNX name (``parameter(name)``).

    A float16 / bfloat16 model computes in float32 unless ``float32=False`` (weights,
    constants and inputs upcast, Casts to those types cast to float32; outputs are float32;
    ``write_back`` rounds the weights back to the model's types): scores and recovery are
    not limited by float16's range and precision.
    """

    def __init__(self, model: onnx.ModelProto, *, trainable: Callable[[str], bool] | None = None,
                 float32: bool = True) -> None:
        super().__init__()
        graph = model.graph
        self.opset = _opset(model)
        self._float32 = float32
        graph_nodes = [float32_node(n) for n in graph.node] if float32 else list(graph.node)
        self.params = torch.nn.Module()
        self.consts = torch.nn.Module()
        self._slots: dict[str, _Slot] = {}
        self._static: dict[str, np.ndarray] = {}
        uses = self._uses(graph_nodes)
        trainable = trainable or self._default_trainable(graph, uses)

        source, pages = source_of(model), PageRelease(model)
        for init in graph.initializer:  # weights kept in files are read (and copied) one at a time
            value = to_torch(read_tensor(init, model, source, unaligned_ok=True), init.data_type)
            self._register(init.name, value, uses, trainable, "initializer")
            if is_external(init):
                pages.read(tensor_nbytes(init))
        pages.close()
        self.input_names = [vi.name for vi in graph.input if vi.name not in self._slots]
        self.output_names = [vi.name for vi in graph.output]

        constants = [n for n in graph_nodes if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS]
        for node in constants:
            value = implementation(node, self.opset)(Node(node, self.opset, {}))
            self._register(node.output[0], value.clone(), uses, trainable, "constant")

        nodes = [n for n in graph_nodes if not (n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS)]
        nodes = _topological(nodes, set(self._slots) | set(self.input_names))
        self._steps = self._plan(nodes)
        self._hooks: dict[tuple[str, int], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._hooks_by_node: dict[str, list[tuple[int, Callable[[torch.Tensor], torch.Tensor]]]] = {}
        self._capture: tuple[set[str], dict[str, torch.Tensor]] | None = None
        self._known = set(self._slots) | set(self.input_names) | {o for s in self._steps for o in s.outputs if o}
        # steps per stretch whose activations are recomputed in the backward pass instead of kept
        # (``recompute``; 0: every activation kept)
        self.recompute_every = 0
        self._stretches: tuple[int, list[tuple[int, int, list[str], list[str]]]] | None = None

    # -- construction --------------------------------------------------------------
    @staticmethod
    def _uses(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[tuple[str, int, str]]]:
        """tensor -> [(op type, slot, first output)] for every read."""
        uses: dict[str, list[tuple[str, int, str]]] = {}
        for node in nodes:
            for slot, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node.op_type, slot, node.output[0] if node.output else ""))
        return uses

    @staticmethod
    def _default_trainable(graph: onnx.GraphProto, uses: dict[str, list[tuple[str, int, str]]]
                           ) -> Callable[[str], bool]:
        numel = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] not in numel:
                value = next((a for a in node.attribute if a.name == "value"), None)
                numel[node.output[0]] = int(np.prod(value.t.dims)) if value is not None else 1

        def weight_like(name: str) -> bool:
            todo, seen = [name], set()
            while todo:  # follow the constant through layout-only ops to the ops reading it
                tensor = todo.pop()
                if tensor in seen:
                    continue
                seen.add(tensor)
                for op_type, slot, out in uses.get(tensor, ()):
                    if slot in WEIGHT_SLOTS.get(op_type, ()) and (op_type not in _ELEMENTWISE
                                                                  or numel.get(name, 2) > 1):
                        return True
                    if op_type in _PASS_THROUGH and slot == 0 and out:
                        todo.append(out)
            return False

        return weight_like

    def _register(self, name: str, value: torch.Tensor, uses: dict[str, list[tuple[str, int, str]]],
                  trainable: Callable[[str], bool], source: str) -> None:
        if self._float32 and value.dtype in LOW_TORCH_FLOATS:
            value = value.float()
        used = uses.get(name, [])
        control = bool(used) and all(slot in CONTROL_SLOTS.get(op_type, ()) for op_type, slot, _ in used)
        key = self._key(name)
        if value.dtype.is_floating_point and not control:
            self.params.register_parameter(key, torch.nn.Parameter(value, requires_grad=bool(trainable(name))))
            self._slots[name] = _Slot("params", key, source)
        else:
            self.consts.register_buffer(key, value)
            self._slots[name] = _Slot("consts", key, source)
            if value.numel() <= STATIC_MAX_ELEMS:
                self._static[name] = value.numpy() if value.dtype != torch.bfloat16 else value.float().numpy()

    def _key(self, name: str) -> str:
        key = re.sub(r"\W", "_", name) or "t"
        if key[0].isdigit():
            key = "t_" + key
        base, k = key, 1
        taken = set(self.params._parameters) | set(self.consts._buffers)
        while key in taken or hasattr(self.params, key):  # Module attributes such as half, float
            key, k = f"{base}_{k}", k + 1
        return key

    def _plan(self, nodes: list[onnx.NodeProto]) -> list[_Step]:
        steps = []
        for i, node in enumerate(nodes):
            fn = implementation(node, self.opset)
            static = {slot: self._static[name] for slot, name in enumerate(node.input) if name in self._static}
            info = Node(node, self.opset, static)
            info.name = info.name or f"{node.op_type}_{i}"  # prepare() names every node; a fallback for messages
            steps.append(_Step(info, fn, list(node.input), list(node.output), []))
        keep = set(self.output_names) | set(self._slots)
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                if name:
                    last[name] = i
        for name, i in last.items():
            if name not in keep:
                steps[i].free.append(name)
        return steps

    # -- access ----------------------------------------------------------------------
    def parameter(self, name: str) -> torch.Tensor:
        """The parameter (or constant buffer) holding the ONNX initializer / constant ``name``."""
        slot = self._slots.get(name)
        if slot is None:
            raise KeyError(f"no initializer or constant named '{name}' in this model")
        container = self.params if slot.container == "params" else self.consts
        return getattr(container, slot.key)

    def named_initializers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(ONNX name, tensor) for every initializer and Constant value, parameters and buffers."""
        for name in self._slots:
            yield name, self.parameter(name)

    @property
    def node_names(self) -> list[str]:
        return [s.node.name for s in self._steps]

    def extra_repr(self) -> str:
        return f"nodes={len(self._steps)}, inputs={self.input_names}, outputs={self.output_names}, opset={self.opset}"

    # -- hooks and capture ---------------------------------------------------------------
    def set_input_hook(self, node_name: str, slot: int,
                       fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Pass input ``slot`` of node ``node_name`` through ``fn`` before the node reads it (None removes)."""
        steps = [s for s in self._steps if s.node.name == node_name]
        if not steps:
            raise KeyError(f"no node named '{node_name}' in this model")
        if len(steps) > 1:
            raise ValueError(f"node name '{node_name}' is not unique (onnxprune.prepare.normalize.prepare names every node)")
        step = steps[0]
        if not 0 <= slot < len(step.inputs) or not step.inputs[slot]:
            raise IndexError(f"node '{node_name}' ({step.node.op_type}) has no input in slot {slot}")
        if fn is None:
            self._hooks.pop((node_name, slot), None)
        else:
            self._hooks[(node_name, slot)] = fn
        self._hooks_by_node = {}
        for (node, s), f in sorted(self._hooks.items(), key=lambda kv: kv[0]):
            self._hooks_by_node.setdefault(node, []).append((s, f))

    def clear_input_hooks(self) -> None:
        self._hooks.clear()
        self._hooks_by_node = {}

    @contextlib.contextmanager
    def capture(self, tensor_names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, forward() records the named tensors (as computed, graph attached)."""
        names = set(tensor_names)
        unknown = sorted(names - self._known)
        if unknown:
            raise KeyError(f"no tensor(s) named {unknown} in this model")
        store: dict[str, torch.Tensor] = {}
        previous = self._capture
        self._capture = (names, store)
        try:
            yield store
        finally:
            self._capture = previous

    # -- execution ---------------------------------------------------------------------
    def _device(self) -> torch.device:
        for t in self.params.parameters():
            return t.device
        for t in self.consts.buffers():
            return t.device
        return torch.device("cpu")

    def _feeds(self, inputs: tuple, named: dict) -> dict[str, torch.Tensor]:
        if len(inputs) > len(self.input_names):
            raise TypeError(f"expected at most {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        feeds = dict(zip(self.input_names, inputs))
        for name, value in named.items():
            if name not in self.input_names:
                raise TypeError(f"unknown input '{name}' (inputs: {self.input_names})")
            if name in feeds:
                raise TypeError(f"input '{name}' given twice")
            feeds[name] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TypeError(f"missing input(s) {missing}")
        for name, value in feeds.items():
            if not isinstance(value, torch.Tensor):
                feeds[name] = value = torch.as_tensor(np.asarray(value), device=self._device())
            if self._float32 and value.dtype in LOW_TORCH_FLOATS:
                feeds[name] = value.float()
        return feeds

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        params, consts = self.params._parameters, self.consts._buffers
        env: dict[str, torch.Tensor] = {
            name: (params if slot.container == "params" else consts)[slot.key] for name, slot in self._slots.items()}
        feeds = self._feeds(inputs, named)
        env.update(feeds)
        first = feeds.get(self.input_names[0]) if self.input_names else None
        batch = int(first.shape[0]) if first is not None and first.dim() > 0 else None
        capture = self._capture
        if capture is not None:
            for name in capture[0]:
                if name in env:
                    capture[1][name] = env[name]
        hooks = self._hooks_by_node
        if self.recompute_every > 0 and capture is None and torch.is_grad_enabled():
            self._run_stretches(env, hooks, batch)
        else:
            self._run_steps(self._steps, env, hooks, batch, capture)
        outs = tuple(env[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def _run_steps(self, steps: list[_Step], env: dict[str, torch.Tensor],
                   hooks: dict[str, list[tuple[int, Callable[[torch.Tensor], torch.Tensor]]]], batch: int | None,
                   capture: tuple[set[str], dict[str, torch.Tensor]] | None) -> None:
        for step in steps:
            node = step.node
            args = [env[name] if name else None for name in step.inputs]
            for slot, fn in hooks.get(node.name, ()):
                args[slot] = fn(args[slot])
            try:
                result = step.fn(node, *args)
            except NotImplementedError:
                raise
            except (IndexError, RuntimeError) as exc:  # torch's errors for inputs a node cannot take
                raise ModelRunError(_run_failure(node, args, exc, batch)) from exc
            except Exception as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"while executing node '{node.name}' ({node.op_type})")
                raise
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(step.outputs, results):
                if name:
                    if value is None:
                        raise node.error(f"output '{name}' is not produced by this implementation")
                    env[name] = value
                    if capture is not None and name in capture[0]:
                        capture[1][name] = value
            for name in step.free:
                env.pop(name, None)

    # -- recomputation: activations of stretches of steps made again in the backward pass ----
    @contextlib.contextmanager
    def recompute(self, every: int) -> Iterator[None]:
        """Within the block, a forward pass with gradients keeps only the tensors passed
        between stretches of ``every`` steps; each stretch runs again in the backward pass to
        make its activations (``torch.utils.checkpoint``, non-reentrant: the autograd graph and
        the order of its gradients are those of a plain pass; the stretch's second run makes
        the same values, so the gradients are the same to the bit). One more forward pass of
        time, for a fraction of the activations' memory (a decoder LM's attention and MLP
        intermediates over hundreds of tokens). Not with ``capture`` (a stretch's second run
        would record its tensors again)."""
        previous = self.recompute_every
        self.recompute_every = max(0, int(every))
        try:
            yield
        finally:
            self.recompute_every = previous

    def stretches(self, every: int) -> list[tuple[int, int, list[str], list[str]]]:
        """(first step, end, tensors read from before it, tensors it makes that are read after it
        or are graph outputs) per stretch of ``every`` consecutive steps."""
        if self._stretches is not None and self._stretches[0] == every:
            return self._stretches[1]
        slots, outputs = set(self._slots), set(self.output_names)
        last: dict[str, int] = {}
        for i, step in enumerate(self._steps):
            for name in step.inputs:
                if name:
                    last[name] = i
        plan = []
        for lo in range(0, len(self._steps), every):
            hi = min(lo + every, len(self._steps))
            made: set[str] = set()
            reads: list[str] = []
            for step in self._steps[lo:hi]:
                reads.extend(n for n in step.inputs if n and n not in made and n not in slots)
                made.update(o for o in step.outputs if o)
            out = [o for step in self._steps[lo:hi] for o in step.outputs
                   if o and (last.get(o, -1) >= hi or o in outputs)]
            plan.append((lo, hi, list(dict.fromkeys(reads)), list(dict.fromkeys(out))))
        self._stretches = (every, plan)
        return plan

    def _run_stretches(self, env: dict[str, torch.Tensor],
                       hooks: dict[str, list[tuple[int, Callable[[torch.Tensor], torch.Tensor]]]],
                       batch: int | None) -> None:
        from torch.utils.checkpoint import checkpoint

        slots = {name: env[name] for name in self._slots}
        for lo, hi, reads, made in self.stretches(self.recompute_every):
            steps = self._steps[lo:hi]

            def stretch(*values: torch.Tensor, _steps: list[_Step] = steps, _reads: list[str] = reads,
                        _made: list[str] = made) -> tuple[torch.Tensor, ...]:
                local = dict(slots)
                local.update(zip(_reads, values))
                self._run_steps(_steps, local, hooks, batch, None)
                return tuple(local[name] for name in _made)

            results = checkpoint(stretch, *[env[name] for name in reads], use_reentrant=False,
                                 preserve_rng_state=False)
            for step in steps:
                for name in step.free:
                    env.pop(name, None)
            env.update(zip(made, results))

    # -- back to ONNX ----------------------------------------------------------------------
    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` with the current values written into the initializers (and
        Constant nodes) of the same names; dtypes, shapes and graph structure unchanged."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for init in out.graph.initializer:
            slot = self._slots.get(init.name)
            if slot is None or slot.source != "initializer":
                continue
            value = self.parameter(init.name)
            if tuple(value.shape) != tuple(init.dims):
                raise ValueError(f"initializer '{init.name}': module holds shape {tuple(value.shape)}, "
                                 f"model has {tuple(init.dims)}")
            doc = init.doc_string
            init.CopyFrom(numpy_helper.from_array(to_numpy(value, init.data_type), init.name))
            if doc:
                init.doc_string = doc
        for node in out.graph.node:
            if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS or not node.output:
                continue
            slot = self._slots.get(node.output[0])
            if slot is None or slot.source != "constant":
                continue
            self._write_constant(node, self.parameter(node.output[0]))
        return out

    @staticmethod
    def _write_constant(node: onnx.NodeProto, value: torch.Tensor) -> None:
        for attr in node.attribute:
            if attr.name == "value":
                attr.t.CopyFrom(numpy_helper.from_array(to_numpy(value, attr.t.data_type), attr.t.name))
            elif attr.name == "value_float":
                attr.f = float(value.item())
            elif attr.name == "value_floats":
                del attr.floats[:]
                attr.floats.extend(value.detach().cpu().reshape(-1).tolist())

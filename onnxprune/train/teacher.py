"""The distillation teacher: a frozen torch execution of the original ONNX model.

A teacher must read the same inputs and produce the same outputs (names, order, ranks,
static sizes, element types) as the student; anything else is refused up front with
``TeacherMismatchError``, and the actual output shapes are compared again on the first batch.
Teacher outputs for the whole training set are computed once and cached when they fit in
``cache_bytes`` (they never change).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.graph import GraphIndex
from onnxprune.train.errors import TeacherMismatchError

CACHE_BYTES = 512 * 2**20


def _signature(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple]:
    index = GraphIndex(model)
    return {n: (index.shape(n), index.elem_type(n)) for n in names}


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits], [vi.name for vi in model.graph.output]


def _dims_differ(a, b) -> bool:  # noqa: ANN001
    if a is None or b is None:
        return False
    if len(a) != len(b):
        return True
    return any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a[1:], b[1:]))


def check_teacher(teacher: onnx.ModelProto, student: onnx.ModelProto) -> None:
    """Refuse a teacher whose inputs or outputs differ from the student's."""
    t_in, t_out = io_names(teacher)
    s_in, s_out = io_names(student)
    problems = []
    if sorted(t_in) != sorted(s_in):
        problems.append(f"inputs differ: teacher {t_in}, student {s_in}")
    if t_out != s_out:
        problems.append(f"outputs differ: teacher {t_out}, student {s_out}")
    if not problems:
        ts, ss = _signature(teacher, t_in + t_out), _signature(student, s_in + s_out)
        for name in s_in + s_out:
            (tshape, ttype), (sshape, stype) = ts[name], ss[name]
            if _dims_differ(tshape, sshape):
                problems.append(f"'{name}' has shape {list(tshape)} in the teacher, {list(sshape)} in the student")
            elif ttype and stype and ttype != stype:
                problems.append(f"'{name}' has element type {onnx.TensorProto.DataType.Name(ttype)} in the teacher, "
                                f"{onnx.TensorProto.DataType.Name(stype)} in the student")
    if problems:
        raise TeacherMismatchError("the teacher does not match the student: " + "; ".join(problems))


class Teacher:
    """Frozen teacher outputs per batch (by sample indices), cached for the whole set when small."""

    def __init__(self, model: onnx.ModelProto, student: onnx.ModelProto, device) -> None:  # noqa: ANN001
        import torch

        from onnxprune.torchexec import OnnxModule

        check_teacher(model, student)
        self.device = device
        self.module = OnnxModule(model, trainable=lambda name: False).to(device).eval()
        self.names = [vi.name for vi in model.graph.output]
        self._cache: tuple[torch.Tensor, ...] | None = None
        self._checked = False

    def _run(self, feeds: Mapping[str, object]) -> tuple:
        import torch

        with torch.no_grad():
            out = self.module(**feeds)
        return out if isinstance(out, tuple) else (out,)

    def precompute(self, inputs: Mapping[str, np.ndarray], batch_size: int, cache_bytes: int = CACHE_BYTES) -> None:
        import torch

        n = len(next(iter(inputs.values())))
        first = self._run({k: torch.as_tensor(v[:batch_size], device=self.device) for k, v in inputs.items()})
        per_sample = sum(t.element_size() * t[0].numel() for t in first if t.dim() > 0)
        if any(t.dim() == 0 or t.shape[0] != min(batch_size, n) for t in first) or per_sample * n > cache_bytes:
            return  # outputs not batched along axis 0, or too large: computed per batch
        parts = [first]
        for start in range(batch_size, n, batch_size):
            parts.append(self._run({k: torch.as_tensor(v[start:start + batch_size], device=self.device)
                                    for k, v in inputs.items()}))
        self._cache = tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))

    def outputs(self, idx: np.ndarray, feeds: Mapping[str, object]) -> tuple:
        import torch

        if self._cache is not None:
            sel = torch.as_tensor(idx, device=self._cache[0].device)
            return tuple(t.index_select(0, sel) for t in self._cache)
        return self._run(feeds)

    def check_outputs(self, teacher_out: tuple, student_out: tuple) -> None:
        if self._checked:
            return
        for name, t, s in zip(self.names, teacher_out, student_out):
            if tuple(t.shape) != tuple(s.shape):
                raise TeacherMismatchError(f"output '{name}' has shape {list(t.shape)} from the teacher and "
                                           f"{list(s.shape)} from the student on the same batch")
        self._checked = True

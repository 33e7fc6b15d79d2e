"""Post-training recovery of a pruned model: one walk over the pruned graph in topological
order, each node handled with the model as recovered so far.

- a BatchNormalization downstream of a pruned consumer gets new running statistics
  (``bn``), measured on its input in the current model;
- a consumer that lost input channels is refitted by least squares (``lstsq``) to the
  original consumer's output, or only one scale per kept input channel and its bias are
  (``scale``: Kwon et al. 2022's output-scale tuning, well posed with few calibration rows
  for wide layers, as in transformers); where neither is on or possible (3-D
  convolutions), its bias is compensated (``bias``) so that its mean output matches the
  original's. Both fits include the bias, so they subsume bias compensation, and a full
  ``lstsq`` refit subsumes ``scale``: at most one method touches a node.

The walk order is what makes the methods compose: a BN is re-estimated after the layers
feeding it were refitted, and every refit sees inputs produced by the already-recovered
layers before it (He et al. 2017 reconstruct layer by layer in the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.calib.data import CalibrationData
from onnxprune.errors import OnnxPruneError
from onnxprune.graph import GraphIndex, attr
from onnxprune.plan import Plan
from onnxprune.recovery import bn as bn_stats
from onnxprune.recovery.bias import bias_delta
from onnxprune.recovery.channels import ChannelMap
from onnxprune.recovery.layers import Layer, Unsupported
from onnxprune.recovery.lstsq import relative_error, ridge_fit
from onnxprune.recovery.params import add_bias, set_constant
from onnxprune.recovery.probe import Probe, batch_size_for
from onnxprune.recovery.report import METHODS, RecoveryReport
from onnxprune.recovery.scales import scale_fit
from onnxprune.recovery.stats import Moments, RowSample

Progress = Callable[[int, int, str], None]
_CONSUMER_METHODS = ("lstsq", "scale", "bias")


class RecoveryError(OnnxPruneError):
    """Recovery cannot run: unknown method, empty calibration set, a pruned model that does
    not belong to the original."""


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis, plan: Plan,
            calib: CalibrationData, *, methods: Sequence[str] = ("bias", "lstsq", "scale", "bn"), ridge: float = 1e-3,
            max_rows: int = 20000, progress: Progress | None = None, batch_size: int = 256,
            bias_means: str = "current", bn_mode: str = "reestimate", weighting: str = "uniform",
            seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """Return a recovered copy of ``pruned`` (same graph structure, new weights) and a report.

    ``original`` is the prepared model ``analysis`` was made on; ``pruned`` is
    ``apply_plan(original, analysis, plan).model``; ``calib`` are unlabelled inputs.

    - ``methods``: any of 'bn', 'bias', 'lstsq', 'scale' (the order given does not matter:
      see the module docstring).
    - ``ridge``: relative ridge of the least-squares fits (times trace / size of the centred
      Gram matrix), pulling towards the pruned weights (scales towards 1).
    - ``max_rows``: rows per least-squares fit (a fixed-seed subsample, ``seed``).
    - ``progress(done, total, node)`` is called after every step; ``batch_size``: samples
      per onnxruntime run (a static batch dimension in the model wins).
    - ``bias_means``: 'current' (the kept inputs' means are measured in the model as recovered
      so far, so the consumer's mean output matches the original's exactly) or 'original'
      (all means from the original model: the FLAP formula as published).
    - ``bn_mode``: 'reestimate' (the calibration mean / variance of the BN's current input) or
      'match' (the BN's output keeps its original per-channel mean and variance).

    - ``weighting``: how the least-squares fits weigh their rows and outputs: 'uniform', or
      'fisher' (each row and output channel by how much an error there moves the graph
      outputs, measured in torch on the original model, see ``sensitivity``: padded tokens
      that a pooling ignores weigh nothing). Needs torch.

    The report (a dict): per step (node, method) what was updated or skipped and why, with
    details (relative reconstruction error before / after a fit, bias edits), and the MSE of
    the graph outputs against the original on the calibration data, before and after.
    """
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise RecoveryError(f"unknown recovery method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    if max_rows < 1 or ridge < 0:
        raise RecoveryError(f"max_rows must be positive and ridge non-negative (got {max_rows}, {ridge})")
    if bias_means not in ("current", "original"):
        raise RecoveryError(f"unknown bias_means '{bias_means}' (current or original)")
    if bn_mode not in ("reestimate", "match"):
        raise RecoveryError(f"unknown bn_mode '{bn_mode}' (reestimate or match)")
    if weighting not in ("uniform", "fisher"):
        raise RecoveryError(f"unknown weighting '{weighting}' (uniform or fisher)")
    if len(calib) == 0:
        raise RecoveryError("recovery needs calibration data; the calibration set is empty")
    plan.validate(analysis)
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    return _Recovery(original, model, analysis, plan, calib, methods, ridge, max_rows, progress, batch_size,
                     bn_mode, bias_means, weighting, seed).run()


class _Recovery:
    def __init__(self, original: onnx.ModelProto, model: onnx.ModelProto, analysis: Analysis, plan: Plan,
                 calib: CalibrationData, methods: tuple[str, ...], ridge: float, max_rows: int,
                 progress: Progress | None, batch_size: int, bn_mode: str, bias_means: str, weighting: str,
                 seed: int) -> None:
        self.original, self.model = original, model
        self.orig_index = GraphIndex(original)
        self.channels = ChannelMap(analysis, plan)
        self.probe = Probe(calib, batch_size)
        self.methods, self.ridge, self.max_rows = methods, ridge, max_rows
        self.progress, self.bn_mode, self.seed = progress, bn_mode, seed
        self.bias_means, self.weighting = bias_means, weighting
        self.calib, self.batch_size = calib, batch_size
        self.weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        held = _held_out(np.arange(len(calib)))
        self.held = None if held.all() or not held.any() else Probe(
            CalibrationData({k: v[held] for k, v in calib.inputs.items()}), batch_size)
        self._held_reference: list[dict[str, np.ndarray]] | None = None
        self.report = RecoveryReport(methods, len(calib), weighting)

    # -- the walk ---------------------------------------------------------
    def run(self) -> tuple[onnx.ModelProto, dict]:
        index = GraphIndex(self.model)
        consumers = [n.name for n in index.graph.node if self.channels.loses_inputs(n.name)]
        for ref in self.channels.consumers.values():
            if self.channels.loses_inputs(ref.node) and ref.node not in index.nodes:
                for m in _CONSUMER_METHODS:
                    if m in self.methods:
                        self.report.skipped(ref.node, "?", m, "node is not in the pruned graph")
        affected = _downstream(index, consumers)
        steps: list[tuple[str, str]] = []
        for node in index.graph.node:
            if node.name in consumers and ({"bias", "lstsq", "scale"} & set(self.methods)):
                steps.append(("consumer", node.name))
            elif node.op_type == "BatchNormalization" and "bn" in self.methods:
                if node.input[0] in affected:
                    steps.append(("bn", node.name))
                else:
                    self.report.skipped(node.name, node.op_type, "bn", "input unchanged (no pruned consumer upstream)")
        orig_means = self._original_statistics(steps)
        if self.weighting == "fisher" and {"lstsq", "scale"} & set(self.methods):
            self.weights = self._sensitivities([name for kind, name in steps if kind == "consumer"])
        before = self.probe.mse(self.original, self.model)
        for done, (kind, name) in enumerate(steps, 1):
            if kind == "bn":
                self._bn(name, orig_means)
            else:
                self._consumer(name, orig_means)
            if self.progress is not None:
                self.progress(done, len(steps), name)
        after = self.probe.mse(self.original, self.model) if steps else before
        self.report.mse = {"pruned": before["total"], "recovered": after["total"],
                           "per_output": {k: {"pruned": before[k], "recovered": after[k]}
                                          for k in before if k != "total"}}
        return self.model, self.report.to_dict()

    def _original_statistics(self, steps: list[tuple[str, str]]) -> dict[tuple[str, int], Moments]:
        """Per-channel moments, in the original model, of every consumer's and BN's input,
        by (tensor, channel axis)."""
        wanted: dict[tuple[str, int], Moments] = {}
        for kind, name in steps:
            node = self.orig_index.nodes.get(name)
            if node is None:
                continue
            if kind == "bn":
                wanted.setdefault((node.input[0], 1), Moments(1))
            else:
                ref = self.channels.consumer(name)
                assert ref is not None
                wanted.setdefault((node.input[ref.slot], ref.axis), Moments(ref.axis))
        for _, _, out in self.probe.stream(self.original, [t for t, _ in wanted]):
            for (tensor, _), acc in wanted.items():
                acc.update(out[tensor])
        return wanted

    def _sensitivities(self, consumers: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Fisher row / channel weights of the refitted consumers' outputs in the original model."""
        from onnxprune.recovery.sensitivity import output_sensitivity

        axes = {}
        for name in consumers:
            node = self.orig_index.nodes.get(name)
            if node is None:
                continue
            try:
                layer = Layer.of(self.orig_index, node)
            except Unsupported:
                continue
            axes[node.output[0]] = 1 if layer.kind == "conv" else -1
        batch = batch_size_for(self.original, min(self.batch_size, 32))
        return output_sensitivity(self.original, axes, self.calib, batch_size=batch, seed=self.seed) if axes else {}

    # -- consumers ----------------------------------------------------------
    def _consumer(self, name: str, orig_means: dict[tuple[str, int], Moments]) -> None:
        index = GraphIndex(self.model)
        node = index.nodes[name]
        orig_node = self.orig_index.nodes.get(name)
        if orig_node is None:
            for m in _CONSUMER_METHODS:
                if m in self.methods:
                    self.report.skipped(name, node.op_type, m, "node is not in the original model")
            return
        try:
            layer = Layer.of(index, node)
            orig_layer = Layer.of(self.orig_index, orig_node)
        except Unsupported as exc:
            for m in _CONSUMER_METHODS:
                if m in self.methods:
                    self.report.skipped(name, node.op_type, m, str(exc))
            return
        fallback = ""
        for method in ("lstsq", "scale"):
            if method in self.methods:
                try:
                    self._refit(layer, orig_layer, method)
                    return
                except Unsupported as exc:
                    self.report.skipped(name, node.op_type, method, str(exc))
                    fallback = f" ({method} not possible)"
        if "bias" in self.methods:
            self._bias(layer, orig_layer, orig_means, fallback)

    def _masks(self, layer: Layer, orig_layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        in_kept = self.channels.input_kept(layer.node.name)
        assert in_kept is not None
        out_kept = self.channels.output_kept(layer.node.name, orig_layer.outputs)
        w, w0 = layer.per_input(), orig_layer.per_input()
        if w.shape != (int(out_kept.sum()), int(in_kept.sum())) or w0.shape != (len(out_kept), len(in_kept)):
            raise RecoveryError(f"node '{layer.node.name}': pruned weight {list(w.shape)} does not match the plan "
                                f"(original {list(w0.shape)}, keeping {int(out_kept.sum())} x {int(in_kept.sum())})")
        return in_kept, out_kept

    def _bias(self, layer: Layer, orig_layer: Layer, orig_means: dict[tuple[str, int], Moments],
              note: str = "") -> None:
        name = layer.node.name
        in_kept, out_kept = self._masks(layer, orig_layer)
        ref = self.channels.consumer(name)
        assert ref is not None
        mean = orig_means[(orig_layer.node.input[ref.slot], ref.axis)].mean
        kept_mean = mean[in_kept]
        if self.bias_means == "current":
            cur = Moments(ref.axis)
            for _, _, out in self.probe.stream(self.model, [layer.node.input[ref.slot]]):
                cur.update(out[layer.node.input[ref.slot]])
            kept_mean = cur.mean
        delta = bias_delta(orig_layer.per_input(), layer.per_input(), mean, in_kept, out_kept, kept_mean)
        how = add_bias(self.model, name, delta)
        self.report.updated(name, layer.node.op_type, "bias", bias=how + note,
                            removed_inputs=int((~in_kept).sum()), max_shift=float(np.abs(delta).max(initial=0.0)))

    def _refit(self, layer: Layer, orig_layer: Layer, method: str) -> None:
        """Least-squares refit of the weights ('lstsq') or of one scale per kept input channel
        ('scale'), with the bias, to the original consumer's output.

        Every fifth calibration sample is held out of the fit. The fit is refused (raising
        ``Unsupported``, so the next method in line is tried) when it makes the layer's error
        on the held-out rows worse (too few rows for its parameters), or when the model with
        the refitted layer computes graph outputs further from the original's on the
        held-out samples than before (the layer-wise objective is only a proxy)."""
        name = layer.node.name
        if layer.kind == "conv" and layer.weight.ndim - 2 not in (1, 2):
            raise Unsupported(f"{layer.weight.ndim - 2}-D convolution (rows are built for 1-D and 2-D only)")
        in_kept, out_kept = self._masks(layer, orig_layer)
        x, y, sample_of, a = self._rows(layer, orig_layer, out_kept)
        c = self.weights[orig_layer.node.output[0]][1][out_kept] if a is not None else None
        w0 = layer.effective_weight().reshape(layer.outputs, -1)
        b0 = layer.effective_bias()
        n_in = int(in_kept.sum())
        channel_of = np.repeat(np.arange(n_in), w0.shape[1] // max(n_in, 1))

        def fit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
            if method == "lstsq":
                w, b = ridge_fit(x[rows], y[rows], w0, self.ridge, None if a is None else a[rows])
                return w, b, {}
            s, b = scale_fit(x[rows], y[rows], w0, channel_of, self.ridge, None if a is None else a[rows], c)
            return w0 * s[channel_of][None, :], b, {"scale_min": float(s.min(initial=1.0)),
                                                    "scale_max": float(s.max(initial=1.0))}

        held = _held_out(sample_of)
        train = ~held if held.any() and (~held).any() else np.ones(len(x), dtype=bool)
        err0 = relative_error(x[train], y[train], w0, b0, None if a is None else a[train])
        w, b, extra = fit(train)
        err1 = relative_error(x[train], y[train], w, b, None if a is None else a[train])
        details: dict = {}
        if train.sum() < len(x):
            ah = None if a is None else a[held]
            before, after = relative_error(x[held], y[held], w0, b0, ah), relative_error(x[held], y[held], w, b, ah)
            details = {"held_out_error_before": before, "held_out_error_after": after}
            if after > before:
                raise Unsupported(f"the fit does not generalise: held-out error {before:.4g} -> {after:.4g}")
        if self.held is not None and train.sum() < len(x):  # graph outputs on held-out samples must not get worse
            backup = onnx.ModelProto()
            backup.CopyFrom(self.model)
            self._apply(layer, w, b - b0)
            before_out, after_out = self._held_output_error(backup), self._held_output_error(self.model)
            self.model.CopyFrom(backup)
            details.update(held_out_output_mse_before=before_out, held_out_output_mse_after=after_out)
            if after_out > before_out:
                raise Unsupported(f"the refitted layer makes the graph outputs worse on held-out samples "
                                  f"(MSE {before_out:.4g} -> {after_out:.4g})")
            w, b, extra = fit(np.ones(len(x), dtype=bool))  # validated: the final fit uses every row
            err1 = relative_error(x, y, w, b, a)
            err0 = relative_error(x, y, w0, b0, a)
        how = self._apply(layer, w, b - b0)
        self.report.updated(name, layer.node.op_type, method, rows=int(len(x)), features=int(x.shape[1]),
                            rel_error_before=err0, rel_error_after=err1, bias=how,
                            removed_inputs=int((~in_kept).sum()), **details, **extra)

    def _apply(self, layer: Layer, w: np.ndarray, bias_delta: np.ndarray) -> str:
        set_constant(self.model, layer.node.name, 1, layer.stored_weight(w.reshape(layer.effective_weight().shape)))
        return add_bias(self.model, layer.node.name, bias_delta)

    def _held_output_error(self, model: onnx.ModelProto) -> float:
        """MSE of the graph outputs against the original's on the held-out calibration samples
        (the original's outputs computed once)."""
        assert self.held is not None
        names = [o.name for o in self.original.graph.output]
        if self._held_reference is None:
            self._held_reference = [out for _, _, out in self.held.stream(self.original, names)]
        total, count = 0.0, 0
        for ref, (_, _, out) in zip(self._held_reference, self.held.stream(model, names)):
            for n in names:
                diff = np.asarray(out[n], np.float64) - np.asarray(ref[n], np.float64)
                total += float(np.sum(diff * diff))
                count += diff.size
        return total / max(count, 1)

    def _rows(self, layer: Layer, orig_layer: Layer,
              out_kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """A fixed-seed sample of input rows in the current model, the original consumer's
        output rows (kept outputs) at the same positions (float64), each row's sample, and
        the rows' weights (None when uniform)."""
        name = layer.node.name
        x_name, y_name = layer.node.input[0], orig_layer.node.output[0]
        sample = RowSample(len(self.probe), self.max_rows, self.seed)
        xs, ys, ids, picked = [], [], [], []
        current = self.probe.stream(self.model, [x_name])
        reference = self.probe.stream(self.original, [y_name])
        for (start, n, cur), (_, _, ref) in zip(current, reference):
            per = layer.rows_per_sample(cur[x_name].shape)
            y = orig_layer.out_rows(ref[y_name])
            if len(y) != n * per:
                raise RecoveryError(f"node '{name}': {n * per} input rows but {len(y)} output rows per batch")
            sample.fix(per)
            local = sample.local(start, n)
            xs.append(layer.rows(cur[x_name], local).astype(np.float64))
            ys.append(y[local][:, out_kept].astype(np.float64))
            ids.append(start + np.asarray(local) // max(per, 1))
            picked.append(start * per + np.asarray(local))
        weights = self.weights.get(y_name)
        a = None if weights is None else weights[0][np.concatenate(picked)]
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids), a

    # -- batch norm ---------------------------------------------------------
    def _bn(self, name: str, orig_means: dict[tuple[str, int], Moments]) -> None:
        index = GraphIndex(self.model)
        node = index.nodes[name]
        orig_node = self.orig_index.nodes.get(name)
        if orig_node is None:
            self.report.skipped(name, node.op_type, "bn", "node is not in the original model")
            return
        if len([o for o in node.output if o]) > 1:
            self.report.skipped(name, node.op_type, "bn", "training-mode BatchNormalization")
            return
        consts = [index.const(node.input[s]) if len(node.input) > s else None for s in (1, 3, 4)]
        if any(c is None for c in consts):
            self.report.skipped(name, node.op_type, "bn", "scale, mean or variance is not a constant")
            return
        _, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in consts)  # type: ignore[arg-type]
        orig_scale = self.orig_index.const(orig_node.input[1])
        kept = self.channels.param_kept(name, 1, int(np.asarray(orig_scale).size))
        if int(kept.sum()) != len(mean):
            self.report.skipped(name, node.op_type, "bn", f"{len(mean)} channels, the plan keeps {int(kept.sum())}")
            return
        cur = Moments(1)
        for _, _, out in self.probe.stream(self.model, [node.input[0]]):
            cur.update(out[node.input[0]])
        orig = orig_means[(orig_node.input[0], 1)]
        o_mean, o_var = orig.mean[kept], orig.var[kept]
        shift = float(np.max(np.abs(cur.mean - o_mean) / np.sqrt(o_var + 1e-12), initial=0.0))
        if self.bn_mode == "match":
            eps = float(attr(node, "epsilon", 1e-5))
            new_mean, new_var = bn_stats.match(mean, var, eps, o_mean, o_var, cur.mean, cur.var)
        else:
            new_mean, new_var = bn_stats.reestimate(cur.mean, cur.var)
        dtype_m, dtype_v = index.const(node.input[3]).dtype, index.const(node.input[4]).dtype
        set_constant(self.model, name, 3, new_mean.astype(dtype_m))
        set_constant(self.model, name, 4, new_var.astype(dtype_v))
        self.report.updated(name, node.op_type, "bn", mode=self.bn_mode, max_mean_shift_in_std=shift)


def _held_out(sample: np.ndarray) -> np.ndarray:
    """Every fifth calibration sample is held out of the fits, to check that they generalise."""
    return np.asarray(sample) % 5 == 4


def _downstream(index: GraphIndex, nodes: Sequence[str]) -> set[str]:
    """Every tensor computed from an output of ``nodes`` (graph order)."""
    seeds = set(nodes)
    tainted: set[str] = set()
    for node in index.graph.node:
        if node.name in seeds or any(i in tainted for i in node.input if i):
            tainted.update(o for o in node.output if o)
    return tainted

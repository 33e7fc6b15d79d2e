"""Post-training recovery of a pruned model: one walk over the pruned graph in topological
order, each node handled with the model as recovered so far.

- a BatchNormalization downstream of a pruned consumer gets new running statistics
  (``bn``), measured on its input in the current model;
- a consumer that lost input channels is refitted by least squares (``lstsq``) to the
  original consumer's output, or only one scale per kept input channel and its bias are
  (``scale``: Kwon et al. 2022's output-scale tuning, well posed with few calibration rows
  for wide layers, as in transformers); where neither is on, possible or accepted, its
  bias is compensated (``bias``) so that its mean output matches the original's. Both
  fits include the bias, so they subsume bias compensation, and a full ``lstsq`` refit
  subsumes ``scale``: at most one method changes a node.

The walk order is what makes the methods compose: a BN is re-estimated after the layers
feeding it were refitted, and every refit sees inputs produced by the already-recovered
layers before it (He et al. 2017 reconstruct layer by layer in the same way).

Held out: part of the calibration set (``holdout``, see ``holdout.split``) is never used
to compute anything. Every step is computed on the other samples and kept only if the
graph outputs on the held-out samples get closer to the original's (a refit must first
lower its own layer's held-out error, with the ridge chosen on it, see ``refit``); at the
end, should the recovered model be further from the original than the pruned one on the
held-out samples, the pruned model is returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex, attr
from onnxprune.io.calib_data import CalibrationData
from onnxprune.plan import Plan
from onnxprune.recovery import bn as bn_stats
from onnxprune.recovery.activations import Probe, batch_size_for
from onnxprune.recovery.augment import augment_images
from onnxprune.recovery.bias import bias_delta
from onnxprune.recovery.channels import ChannelMap
from onnxprune.recovery.errors import RecoveryError
from onnxprune.recovery.holdout import METRICS, HeldOut, split, subset
from onnxprune.recovery.layers import Layer, Unsupported, pooled_source
from onnxprune.recovery.methods import TARGETS, selected
from onnxprune.recovery.methods import names as method_names
from onnxprune.recovery.params import add_bias, set_constant
from onnxprune.recovery.refit import Fit, Refused, Rows, fit_layer
from onnxprune.recovery.report import RecoveryReport
from onnxprune.recovery.segments import Cursor, SuffixFailed, batched
from onnxprune.recovery.segments import supported as runs_in_stretches
from onnxprune.recovery.snapshot import Edits, Snapshot, touching
from onnxprune.recovery.stats import Moments, RowSample
from onnxprune.runtime.memory import release

__all__ = ["RecoveryError", "recover"]

Progress = Callable[[int, int, str], None]
Weights = dict[str, tuple[np.ndarray, np.ndarray]]
HELD_ROWS = 5000  # held-out rows a refit is chosen and checked on, at most


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis, plan: Plan,
            calib: CalibrationData, *, methods: Sequence[str] = ("bias", "lstsq", "scale", "bn"),
            ridge: float | None = None, max_rows: int = 20000, progress: Progress | None = None,
            batch_size: int = 256, bias_means: str = "current", bn_mode: str = "reestimate",
            weighting: str = "uniform", seed: int = 0, holdout: float = 0.25,
            augment: bool = False, downstream: bool | str = False, residual: bool = False,
            held_metric: str = "mse") -> tuple[onnx.ModelProto, dict]:
    """Return a recovered copy of ``pruned`` (same graph structure, new weights) and a report.
    ``pruned`` is left as it was (the built-in methods edit it in place during the walk, each
    edit recorded by ``snapshot.Edits``, and it is put back before this returns).

    ``original`` is the prepared model ``analysis`` was made on; ``pruned`` is
    ``apply_plan(original, analysis, plan).model``; ``calib`` are unlabelled inputs.

    - ``methods``: any of 'bn', 'bias', 'lstsq', 'scale', 'temperature' (the order given does not matter:
      see the module docstring).
    - ``holdout``: the fraction of the calibration samples held out of every fit and used
      to accept or refuse each step (at least 4 samples, see ``holdout.split``; 0: none,
      then nothing is checked and refits with fewer independent rows than unknowns are
      refused).
    - ``ridge``: relative ridge of the least-squares fits (times trace / size of the centred
      Gram matrix), pulling towards the pruned weights (scales towards 1). None (default):
      chosen per layer on the held-out rows from ``refit.RIDGE_GRID`` (1e-3 without them).
    - ``max_rows``: rows per least-squares fit (a fixed-seed subsample, ``seed``).
    - ``augment``: also fit on horizontal flips and shifted crops of the calibration
      images (NCHW float inputs only; 4x the fit samples, see ``augment``).
    - ``downstream``: also refit the mixing layers (Conv, Gemm, MatMul) that lost no input
      but read a tensor the pruning changed, to the original's output from their current
      input: each corrects the error accumulated upstream (held-out checked like the rest);
      'residual': only those whose output joins a residual stream (see ``residual``).
    - ``residual``: a refitted consumer whose output is added to a residual stream (``y = x
      + f(x)``, through a bias ``Add`` or a BatchNormalization) is fitted to the original's stream, not only
      to its own output: the target is the original output plus the drift of the skip
      ``x_original - x_current``, so each residual block also corrects what the blocks before
      it left (held-out checked like the rest).
    - ``held_metric``: what every step must lower on the held-out samples: 'mse' (the graph
      outputs' mean squared difference from the original's) or 'kl' (a causal LM: the mean
      next-token KL divergence from the original's distribution, ``holdout.HeldOut``).
    - ``progress(done, total, node)`` is called after every step (each consumer and BN);
      ``batch_size``: samples per onnxruntime run (a static batch dimension in the model wins).
    - ``bias_means``: 'current' (the kept inputs' means are measured in the model as recovered
      so far, so the consumer's mean output matches the original's exactly) or 'original'
      (all means from the original model: the FLAP formula as published).
    - ``bn_mode``: 'reestimate' (the calibration mean / variance of the BN's current input) or
      'match' (the BN's output keeps its original per-channel mean and variance).
    - ``weighting``: how the least-squares fits weigh their rows and outputs: 'uniform', or
      'fisher' (each row and output channel by how much an error there moves the graph
      outputs, measured in torch on the original model, see ``sensitivity``: padded tokens
      that a pooling ignores weigh nothing). Needs torch.

    The report (a dict, see ``report``): per step (node, method) what was updated, skipped
    (not applicable) or refused (on held-out data) and why, with details (rows against
    unknowns, the ridge chosen, layer errors on fit and held-out rows, held-out graph
    error before / after); ``held_out``: the graph-output MSE against the original on the
    held-out samples and, for classifier outputs, top-1 agreement with it, pruned ->
    recovered (``report.summary_line`` prints them); ``mse``: the same MSE on the samples
    fitted on (optimistic: not a quality figure).
    """
    methods = tuple(dict.fromkeys(methods))
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise RecoveryError(f"unknown recovery method(s) {', '.join(unknown)} (choose from {', '.join(known)})")
    if max_rows < 1 or (ridge is not None and ridge < 0):
        raise RecoveryError(f"max_rows must be positive and ridge non-negative (got {max_rows}, {ridge})")
    if not 0 <= holdout < 1:
        raise RecoveryError(f"holdout must be a fraction in [0, 1) (got {holdout})")
    if bias_means not in ("current", "original"):
        raise RecoveryError(f"unknown bias_means '{bias_means}' (current or original)")
    if bn_mode not in ("reestimate", "match"):
        raise RecoveryError(f"unknown bn_mode '{bn_mode}' (reestimate or match)")
    if downstream not in (False, True, "residual"):
        raise RecoveryError(f"unknown downstream {downstream!r} (False, True or 'residual')")
    if weighting not in ("uniform", "fisher"):
        raise RecoveryError(f"unknown weighting '{weighting}' (uniform or fisher)")
    if held_metric not in METRICS:
        raise RecoveryError(f"unknown held_metric '{held_metric}' (choose from {', '.join(METRICS)})")
    if len(calib) == 0:
        raise RecoveryError("recovery needs calibration data; the calibration set is empty")
    plan.validate(analysis)
    # the built-in methods' edits are undone by snapshots: edit ``pruned`` in place (no copy of
    # every weight next to it during the walk) and put it back before returning
    edits = Edits(pruned) if all(touching(m) for m in methods) else None
    model = pruned
    if edits is None:
        model = onnx.ModelProto()
        model.CopyFrom(pruned)
    fit_idx, held_idx = split(len(calib), holdout)
    fit_data = subset(calib, fit_idx)
    if augment:
        fit_data = augment_images(fit_data)
    held = subset(calib, held_idx) if len(held_idx) else None
    report = RecoveryReport(methods, len(calib), weighting)
    report.holdout = {"fraction": holdout, "samples": len(held_idx), "fit_samples": len(fit_idx),
                      "augment": augment, "fit_rows_from_samples": len(fit_data), "metric": held_metric}
    walk = _Recovery(original, model, pruned, analysis, plan, fit_data, held, methods, ridge, max_rows, progress,
                     batch_size, bn_mode, bias_means, weighting, seed, report, held_metric)
    walk.downstream, walk.residual = downstream, residual
    walk.edits = edits
    if edits is None:
        return walk.run()
    try:
        recovered, report = walk.run()
        del walk  # its cursors and held-out outputs go before the copy is made
        release()
        out = onnx.ModelProto()
        out.CopyFrom(recovered)
    finally:
        edits.restore()
    return out, report


class _Recovery:
    def __init__(self, original: onnx.ModelProto, model: onnx.ModelProto, pruned: onnx.ModelProto,
                 analysis: Analysis, plan: Plan, calib: CalibrationData, held: CalibrationData | None,
                 methods: tuple[str, ...], ridge: float | None, max_rows: int, progress: Progress | None,
                 batch_size: int, bn_mode: str, bias_means: str, weighting: str, seed: int,
                 report: RecoveryReport, held_metric: str = "mse") -> None:
        self.original, self.model, self.pruned = original, model, pruned
        self.orig_index = GraphIndex(original)
        self.channels = ChannelMap(analysis, plan)
        self.probe = Probe(calib, batch_size)
        self.held = None if held is None else HeldOut(original, held, batch_size, held_metric)
        self.held_err = float("nan")
        self.methods, self.ridge, self.max_rows = methods, ridge, max_rows
        self.progress, self.bn_mode, self.seed = progress, bn_mode, seed
        self.bias_means, self.weighting = bias_means, weighting
        self.calib, self.held_calib, self.batch_size = calib, held, batch_size
        self.weights: Weights = {}
        self.held_weights: Weights = {}
        self.report = report
        # each of these runs one model on one sample set a stretch of the graph at a time
        self.cursors: dict[str, Cursor] = {}
        if runs_in_stretches(original) and runs_in_stretches(model):
            self.cursors = {"fit": Cursor(calib, batch_size), "fit-orig": Cursor(calib, batch_size)}
            if held is not None:
                self.cursors.update({"held": Cursor(held, batch_size), "held-orig": Cursor(held, batch_size)})
        self.selected = {target: selected(methods, target) for target in TARGETS}  # by recovery.methods
        self.orig_means: dict[tuple[str, int], Moments] = {}
        self.stats_due: dict[tuple[str, int], str] = {}  # (tensor, axis) -> the step that measures it
        self.downstream: bool | str = False  # also refit layers that lost no input (``recover(downstream=)``)
        self.residual = False  # fit residual-branch consumers to the original's stream (``recover(residual=)``)
        self.edits: Edits | None = None  # ``model`` is the caller's pruned model, edited in place

    # -- the walk ---------------------------------------------------------
    def run(self) -> tuple[onnx.ModelProto, dict]:
        index = GraphIndex(self.model)
        consumers = [n.name for n in index.graph.node if self.channels.loses_inputs(n.name)]
        for ref in self.channels.consumers.values():
            if self.channels.loses_inputs(ref.node) and ref.node not in index.nodes:
                for m in self._names("consumer"):
                    self.report.skipped(ref.node, "?", m, "node is not in the pruned graph")
        affected = _downstream(index, consumers)
        if self.downstream:  # the mixing layers reading a changed tensor: correct what came before
            consumers += [n.name for n in index.graph.node
                          if n.name not in consumers and n.input and n.input[0] in affected and _refittable(index, n)
                          and (self.downstream != "residual" or residual_skip(index, n) is not None)]
        steps: list[tuple[str, str]] = []
        for node in index.graph.node:
            if node.name in consumers and self.selected["consumer"]:
                steps.append(("consumer", node.name))
            elif node.op_type == "BatchNormalization" and self.selected["batchnorm"]:
                if node.input[0] in affected:
                    steps.append(("bn", node.name))
                else:
                    for m in self._names("batchnorm"):
                        self.report.skipped(node.name, node.op_type, m,
                                            "input unchanged (no pruned consumer upstream)")
        orig_means = self.orig_means = self._original_statistics(steps)
        if self.weighting == "fisher" and any(m.refit for m in self.selected["consumer"]):
            refitted = [name for kind, name in steps if kind == "consumer"]
            self.weights = self._sensitivities(refitted, self.calib)
            if self.held_calib is not None:
                self.held_weights = self._sensitivities(refitted, self.held_calib)
        held_before = None
        if self.held is not None:
            held_before = self.held.metrics(self.model)
            self.held_err = held_before["criterion"]
        before = self.probe.mse(self.original, self.model)
        for done, (kind, name) in enumerate(steps, 1):
            self._statistics_at(name)
            if kind == "bn":
                self._dispatch(name, "batchnorm")
            else:
                self._consumer(name, orig_means)
            release()  # a step's rows, sessions and outputs: back to the system before the next step's peak
            if self.progress is not None:
                self.progress(done, len(steps), name)
        self.cursors = {}  # the walk is over: their cached activations go before the whole-model runs
        release()
        if held_before is not None:
            self._final_check(held_before, bool(steps))
        self._logits_steps()
        if held_before is not None:
            self.held.drop_reference()  # type: ignore[union-attr]
            release()
        after = self.probe.mse(self.original, self.model) if steps else before
        self.report.mse = {"pruned": before["total"], "recovered": after["total"], "on": "fit samples",
                           "per_output": {k: {"pruned": before[k], "recovered": after[k]}
                                          for k in before if k != "total"}}
        return self.model, self.report.to_dict()

    def _final_check(self, held_before: dict, changed: bool) -> None:
        """Record the held-out figures; return to the pruned model if recovery as a whole made
        the graph outputs further from the original's on the held-out samples."""
        assert self.held is not None
        held_after = self.held.metrics(self.model) if changed else held_before
        self.report.held_out = {"samples": len(self.held), "pruned": held_before, "recovered": held_after}
        if held_after["criterion"] > held_before["criterion"]:
            self.report.reverted = True
            self.report.note = (f"recovery raised the held-out {self._metric_name()} ({held_before['criterion']:.4g} -> "
                                f"{held_after['criterion']:.4g}): kept the pruned model unchanged")
            if self.edits is not None:
                self.model = self.edits.restore()
            else:
                self.model = onnx.ModelProto()
                self.model.CopyFrom(self.pruned)
            self.report.held_out.update(recovered=held_before, rejected=held_after)

    def _logits_steps(self) -> None:
        """The selected methods on a causal LM's logits (``temperature``), once the walk and its
        final check are over; skipped, saying why, without held-out samples judged on the
        next-token KL."""
        chosen = self.selected["logits"]
        if not chosen:
            return
        why = ("needs held-out samples (holdout > 0)" if self.held is None else
               "needs a causal LM judged on the next-token KL (held_metric='kl')" if self.held.metric != "kl" else "")
        if why:
            for m in chosen:
                self.report.skipped("(logits)", "-", m.name, why)
            return
        logits = self.held.logits_name()  # type: ignore[union-attr]
        producer = GraphIndex(self.model).producer.get(logits)
        for m in chosen:
            m.run(self, logits if producer is None else producer.name, "")
            release()

    def temperature_step(self, node: str) -> str | None:
        """One temperature on the logits (computed by ``node``), fitted on the held-out windows
        and kept only if its cross-fitted held-out KL is lower (``recovery.temperature``)."""
        from onnxprune.recovery.temperature import apply_temperature, fold_point

        assert self.held is not None
        logits = self.held.logits_name()
        found = GraphIndex(self.model).nodes.get(node)
        op = "-" if found is None else found.op_type
        fold = fold_point(self.model, logits)
        if isinstance(fold, str):
            self.report.skipped(node, op, "temperature", fold)
            return fold
        if len(self.held) < 2:
            why = "needs at least 2 held-out windows to cross-fit"
            self.report.skipped(node, op, "temperature", why)
            return why
        fit = self.held.temperature(self.model)
        details = {"t": fit.t, "fold_t": list(fit.folds), "held_out_kl_at_1": fit.kl_at_one,
                   "held_out_kl_cross_fitted": fit.kl_cross_fitted,
                   "folded_into": fold.tensor if fold.kind == "initializer" else f"a Mul on '{fold.tensor}'"}
        if not fit.helps:
            why = (f"does not lower the cross-fitted held-out next-token KL "
                   f"({fit.kl_at_one:.4g} -> {fit.kl_cross_fitted:.4g} at t {fit.t:.3g})")
            self.report.refused(node, op, "temperature", why, **details)
            return why
        if self.edits is not None:
            self.edits.keep(Snapshot(self.model, fold.node))
        apply_temperature(self.model, fold, fit.t)
        self.report.updated(node, op, "temperature", **details)
        if self.report.held_out is not None:
            self.report.held_out["temperature"] = {"t": fit.t, "kl_at_1": fit.kl_at_one,
                                                   "kl_cross_fitted": fit.kl_cross_fitted}
        return None

    def _metric_name(self) -> str:
        return "next-token KL" if self.held is not None and self.held.metric == "kl" else "output MSE"

    def _commit(self, name: str, op: str, method: str, apply: Callable[[], dict], details: dict) -> bool:
        """Apply an edit to the model; keep it only if it lowers the graph-output error on the
        held-out samples (always, without them). Reported as updated or refused."""
        recorded: list[int] = []
        if self.edits is not None:  # every edit is recorded to put ``pruned`` back, even if it fails
            backup = Snapshot(self.model, name)
            recorded = self.edits.keep(backup)
        else:
            backup = None if self.held is None else _backup(self.model, name, method)
        details = {**details, **apply()}
        if self.held is not None:
            try:
                err = self.held.error(self.model, self._held_outputs(name))
            except SuffixFailed:  # the cursor gave up while running the rest of the graph
                err = self.held.error(self.model)
            key = "output_mse" if self.held.metric == "mse" else self.held.metric
            details.update({f"held_out_{key}_before": self.held_err, f"held_out_{key}_after": err})
            if not err < self.held_err:
                self.model = backup.restore() if isinstance(backup, Snapshot) else backup
                if self.edits is not None:
                    self.edits.forget(recorded)
                self.report.refused(name, op, method, f"does not lower the graph-output error on held-out samples "
                                                      f"({self._metric_name()} {self.held_err:.4g} -> {err:.4g})",
                                    **details)
                return False
            self.held_err = err
        self.report.updated(name, op, method, **details)
        return True

    def _stream(self, which: str, model: onnx.ModelProto, node: str, names: list[str], *, after: bool = False
                ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """``Probe.stream`` of ``names`` just before ``node`` (just after it with ``after``) on
        the fit ('fit', 'fit-orig': the original) or held-out ('held', 'held-orig') samples:
        from the cursor (only the stretch of the graph since its last stop is run), or by
        running the whole model where the cursor cannot serve them."""
        probe = self.probe if which.startswith("fit") else self.held.probe  # type: ignore[union-attr]
        cursor = self.cursors.get(which)
        values = None if cursor is None else cursor.tensors(model, node, names, after=after)
        return probe.stream(model, names) if values is None else batched(values, probe.batch_size)

    def _held_outputs(self, name: str) -> Iterator[dict[str, np.ndarray]] | None:
        """The current model's graph outputs on the held-out samples, one batch at a time, run
        from the held-out cursor moved to node ``name`` (the one just edited); None where it
        cannot (``segments.SuffixFailed`` while running: it gave up on the way)."""
        cursor = self.cursors.get("held")
        if cursor is None or cursor.tensors(self.model, name, []) is None:
            return None
        return cursor.suffix_batches(self.model)

    def _original_statistics(self, steps: list[tuple[str, str]]) -> dict[tuple[str, int], Moments]:
        """Per-channel moments, in the original model, of every consumer's and BN's input,
        by (tensor, channel axis); none when only refits are asked for (they do not use them).
        With a cursor on the original they are measured at the first step that reads them
        (``_statistics_at``), from the cursor: no whole-model run with every one of them as an
        output (on SmolLM2 that run was the peak of recovery); else here, in one such run."""
        self.stats_due = {}
        if set(self.methods) <= {"lstsq", "scale"}:
            return {}
        wanted: dict[tuple[str, int], Moments] = {}
        for kind, name in steps:
            node = self.orig_index.nodes.get(name)
            if node is None:
                continue
            if kind == "bn":
                key = (node.input[0], 1)
            else:
                ref = self.channels.consumer(name)
                if ref is None:  # a downstream refit (``downstream``): no bias compensation
                    continue
                key = (node.input[ref.slot], ref.axis)
            wanted.setdefault(key, Moments(key[1]))
            self.stats_due.setdefault(key, name)
        if "fit-orig" not in self.cursors:
            self._measure_original(wanted)
            self.stats_due = {}
        return wanted

    def _measure_original(self, moments: dict[tuple[str, int], Moments]) -> None:
        """Accumulate ``moments`` over one whole-model run of the original on the fit samples."""
        for _, _, out in self.probe.stream(self.original, [t for t, _ in moments]):
            for (tensor, _), acc in moments.items():
                acc.update(out[tensor])

    def _statistics_at(self, name: str) -> None:
        """Measure the original's moments that step ``name`` is the first to read, from the
        original's cursor just before node ``name``, batch by batch as ``Probe.stream`` cuts
        them (the same sums to the bit); where the cursor cannot serve them, these and every
        moment still due in one whole-model run, as without a cursor."""
        due = [key for key, at in self.stats_due.items() if at == name]
        if not due:
            return
        for key in due:
            del self.stats_due[key]
        values = self.cursors["fit-orig"].tensors(self.original, name, list(dict.fromkeys(t for t, _ in due)))
        if values is None:
            due += list(self.stats_due)
            self.stats_due = {}
            self._measure_original({key: self.orig_means[key] for key in due})
            return
        for _, _, out in batched(values, batch_size_for(self.original, self.batch_size)):
            for key in due:
                self.orig_means[key].update(out[key[0]])

    def _sensitivities(self, consumers: list[str], calib: CalibrationData) -> Weights:
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
        return output_sensitivity(self.original, axes, calib, batch_size=batch, seed=self.seed) if axes else {}

    # -- consumers ----------------------------------------------------------
    def _layers(self, name: str) -> tuple[Layer, Layer]:
        """The consumer ``name`` in the current model and in the original."""
        index = GraphIndex(self.model)
        return Layer.of(index, index.nodes[name]), Layer.of(self.orig_index, self.orig_index.nodes[name])

    def _consumer(self, name: str, orig_means: dict[tuple[str, int], Moments]) -> None:
        op = GraphIndex(self.model).nodes[name].op_type
        if name not in self.orig_index.nodes:
            for m in self._names("consumer"):
                self.report.skipped(name, op, m, "node is not in the original model")
            return
        try:
            self._layers(name)
        except Unsupported as exc:
            for m in self._names("consumer"):
                self.report.skipped(name, op, m, str(exc))
            return
        self._dispatch(name, "consumer")

    # -- dispatch through the registry (recovery.methods) and the built-in methods' steps -----------
    def _names(self, target: str) -> list[str]:
        return [m.name for m in self.selected[target]]

    def _dispatch(self, name: str, target: str) -> None:
        """Try the selected methods for ``target`` on node ``name`` in their order; the first that
        changes it (records an 'updated' step) ends it. Each passes a note on to the next."""
        note = ""
        for method in self.selected[target]:
            start = len(self.report.steps)
            note = method.run(self, name, note) or ""
            if any(s.status == "updated" and s.node == name for s in self.report.steps[start:]):
                return

    def layers(self, name: str) -> tuple[Layer, Layer]:
        """The consumer ``name`` in the current model and in the original (for a method)."""
        return self._layers(name)

    def commit(self, name: str, op: str, method: str, apply: Callable[[], dict], details: dict) -> bool:
        """Apply an edit to ``self.model``, kept only if it lowers the held-out error (for a method)."""
        return self._commit(name, op, method, apply, details)

    def refit_step(self, name: str, method: str) -> str:
        """The 'lstsq' or 'scale' refit of consumer ``name``; why not, when it did not change it."""
        op = GraphIndex(self.model).nodes[name].op_type
        layer, orig_layer = self._layers(name)
        try:
            fit = self._refit(layer, orig_layer, method)
        except Unsupported as exc:
            self.report.skipped(name, op, method, str(exc))
            return f" ({method} not possible)"
        except Refused as exc:
            self.report.refused(name, op, method, exc.reason, **exc.details)
            return f" ({method} refused)"
        if self._commit(name, op, method, partial(self._apply_fit, layer, fit), fit.details):
            return ""
        return f" ({method} refused)"

    def bias_step(self, name: str, note: str) -> None:
        """The bias compensation of consumer ``name`` (``note``: why no refit changed it)."""
        self._bias(name, self.orig_means, note)

    def batchnorm_step(self, name: str) -> None:
        """The re-estimation of BatchNormalization ``name``'s statistics."""
        self._bn(name, self.orig_means)

    def _masks(self, layer: Layer, orig_layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        in_kept = self.channels.input_kept(layer.node.name)
        if in_kept is None:  # a layer downstream of the pruning that mixes no prunable channel
            in_kept = np.ones(orig_layer.per_input().shape[1], dtype=bool)
        out_kept = self.channels.output_kept(layer.node.name, orig_layer.outputs)
        w, w0 = layer.per_input(), orig_layer.per_input()
        if w.shape != (int(out_kept.sum()), int(in_kept.sum())) or w0.shape != (len(out_kept), len(in_kept)):
            raise RecoveryError(f"node '{layer.node.name}': pruned weight {list(w.shape)} does not match the plan "
                                f"(original {list(w0.shape)}, keeping {int(out_kept.sum())} x {int(in_kept.sum())})")
        return in_kept, out_kept

    def _bias(self, name: str, orig_means: dict[tuple[str, int], Moments], note: str = "") -> None:
        layer, orig_layer = self._layers(name)
        in_kept, out_kept = self._masks(layer, orig_layer)
        ref = self.channels.consumer(name)
        if ref is None or not self.channels.loses_inputs(name):
            self.report.skipped(name, layer.node.op_type, "bias", "no input channel removed")
            return
        mean = orig_means[(orig_layer.node.input[ref.slot], ref.axis)].mean
        kept_mean = mean[in_kept]
        if self.bias_means == "current":
            cur = Moments(ref.axis)
            for _, _, out in self._stream("fit", self.model, name, [layer.node.input[ref.slot]]):
                cur.update(out[layer.node.input[ref.slot]])
            kept_mean = cur.mean
        delta = bias_delta(orig_layer.per_input(), layer.per_input(), mean, in_kept, out_kept, kept_mean)
        self._commit(name, layer.node.op_type, "bias", lambda: {"bias": add_bias(self.model, name, delta) + note},
                     {"removed_inputs": int((~in_kept).sum()), "max_shift": float(np.abs(delta).max(initial=0.0))})

    def _refit(self, layer: Layer, orig_layer: Layer, method: str) -> Fit:
        """Least-squares refit of the weights ('lstsq') or of one scale per kept input channel
        ('scale'), with the bias, to the original consumer's output, chosen and checked on
        the held-out rows (``refit.fit_layer``). Rows come from the layer's own rows and, for
        a dense layer after a global average pooling, also from every position before it."""
        if layer.kind == "conv" and layer.weight.ndim - 2 not in (1, 2):
            raise Unsupported(f"{layer.weight.ndim - 2}-D convolution (rows are built for 1-D and 2-D only)")
        in_kept, out_kept = self._masks(layer, orig_layer)
        positions = self._position_rows(layer, orig_layer, out_kept)  # first: reads tensors before the node
        skip = self._skips(layer, orig_layer, out_kept) if self.residual else None
        sources = [self._rows(layer, orig_layer, out_kept, self.probe, self.weights, skip)]
        if positions is not None:
            sources.append(positions)
        held = None if self.held is None else self._rows(layer, orig_layer, out_kept, self.held.probe,
                                                         self.held_weights, skip, HELD_ROWS)
        weights = self.weights.get(orig_layer.node.output[0])
        c = None if weights is None else weights[1][out_kept]
        w0 = layer.effective_weight().reshape(layer.outputs, -1)
        n_in = int(in_kept.sum())
        channel_of = np.repeat(np.arange(n_in), w0.shape[1] // max(n_in, 1))
        fit = fit_layer(method, sources, held, w0, layer.effective_bias(), channel_of, self.ridge, c)
        fit.details["removed_inputs"] = int((~in_kept).sum())
        return fit

    def _apply_fit(self, layer: Layer, fit: Fit) -> dict:
        return {"bias": self._apply(layer, fit.w, fit.b - layer.effective_bias())}

    def _apply(self, layer: Layer, w: np.ndarray, bias_delta: np.ndarray) -> str:
        set_constant(self.model, layer.node.name, 1, layer.stored_weight(w.reshape(layer.effective_weight().shape)))
        return add_bias(self.model, layer.node.name, bias_delta)

    def _rows(self, layer: Layer, orig_layer: Layer, out_kept: np.ndarray, probe: Probe, weights: Weights,
              skip: tuple[str, str, np.ndarray | None] | None, most: int | None = None) -> Rows:
        """A fixed-seed sample (at most ``most`` rows, default ``max_rows``) of input rows in
        the current model and the original consumer's output rows (kept outputs) at the same
        positions (float64), with the rows' weights (None when uniform); with ``skip``
        (``_skips``) the targets are the original's residual stream less the current skip."""
        name = layer.node.name
        x_name, y_name = layer.node.input[0], orig_layer.node.output[0]
        sample = RowSample(len(probe), most or self.max_rows, self.seed)
        xs, ys, picked = [], [], []
        which = "fit" if probe is self.probe else "held"
        current = self._stream(which, self.model, name, [x_name] + ([skip[0]] if skip else []))
        reference = self._stream(f"{which}-orig", self.original, name, [y_name] + ([skip[1]] if skip else []),
                                 after=True)
        for (start, n, cur), (_, _, ref) in zip(current, reference):
            per = layer.rows_per_sample(cur[x_name].shape)
            y = orig_layer.out_rows(ref[y_name])
            if len(y) != n * per:
                raise RecoveryError(f"node '{name}': {n * per} input rows but {len(y)} output rows per batch")
            sample.fix(per)
            local = sample.local(start, n)
            xs.append(layer.rows(cur[x_name], local).astype(np.float64))
            target = y[local][:, out_kept].astype(np.float64)
            if skip and (ref[skip[1]].shape != ref[y_name].shape
                         or layer.out_rows(cur[skip[0]]).shape[1] != target.shape[1]):
                skip = None  # a broadcast Add is no stream (checked on the first batch, before any row)
            if skip:  # the original's stream, less the current skip: the drift joins the target
                drift = orig_layer.out_rows(ref[skip[1]])[local][:, out_kept] - layer.out_rows(cur[skip[0]])[local]
                target += drift if skip[2] is None else drift / np.where(skip[2] == 0, np.inf, skip[2])
            ys.append(target)
            picked.append(start * per + np.asarray(local))
        w = weights.get(y_name)
        return Rows(np.concatenate(xs), np.concatenate(ys), None if w is None else w[0][np.concatenate(picked)],
                    len(probe))

    def _skips(self, layer: Layer, orig_layer: Layer, out_kept: np.ndarray
               ) -> tuple[str, str, np.ndarray | None] | None:
        """The skip tensors (current model, original) of the residual ``Add`` the consumer's
        output joins (``residual_skip``) and the gain of a BatchNormalization between (None:
        1); None where there is none in either model, or the normalisation between differs
        (re-estimated by ``bn``: a target through it would move)."""
        cur = residual_skip(GraphIndex(self.model), layer.node)
        orig = residual_skip(self.orig_index, orig_layer.node)
        if cur is None or orig is None or (cur[1] is None) != (orig[1] is None):
            return None
        if cur[1] is not None and (len(cur[1]) != int(out_kept.sum()) or len(orig[1]) != len(out_kept)
                                   or not np.allclose(cur[1], orig[1][out_kept], rtol=1e-6, atol=0.0)
                                   or self.selected["batchnorm"]):
            return None
        return cur[0], orig[0], cur[1]

    def _position_rows(self, layer: Layer, orig_layer: Layer, out_kept: np.ndarray) -> Rows | None:
        """For a dense consumer reading a global average pooling (``layers.pooled_source``):
        one row per sample and spatial position before the pooling (the current model's
        features there), with the original layer applied to the original features at the
        same position as the target. None for any other consumer."""
        src, orig_src = pooled_source(GraphIndex(self.model), layer.node), pooled_source(self.orig_index,
                                                                                         orig_layer.node)
        if src is None or orig_src is None:
            return None
        w_orig, b_orig = orig_layer.effective_weight()[out_kept], orig_layer.effective_bias()[out_kept]
        sample = RowSample(len(self.probe), self.max_rows, self.seed)
        xs, ys, ids = [], [], []
        for (start, n, cur), (_, _, ref) in zip(self._stream("fit", self.model, layer.node.name, [src]),
                                                self._stream("fit-orig", self.original, layer.node.name, [orig_src],
                                                             after=True)):
            x, x0 = np.moveaxis(cur[src], 1, -1), np.moveaxis(ref[orig_src], 1, -1)
            if x.shape[-1] != layer.effective_weight().shape[1] or x0.shape[-1] != w_orig.shape[1]:
                return None
            per = int(np.prod(x.shape[1:-1], dtype=np.int64))
            sample.fix(per)
            local = sample.local(start, n)
            xs.append(x.reshape(-1, x.shape[-1])[local].astype(np.float64))
            ys.append(x0.reshape(-1, x0.shape[-1])[local].astype(np.float64) @ w_orig.T + b_orig)
            ids.append(start + np.asarray(local) // max(per, 1))
        w = self.weights.get(orig_layer.node.output[0])
        return Rows(np.concatenate(xs), np.concatenate(ys), None if w is None else w[0][np.concatenate(ids)],
                    len(self.probe), "positions")

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
        for _, _, out in self._stream("fit", self.model, name, [node.input[0]]):
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

        def apply() -> dict:
            set_constant(self.model, name, 3, new_mean.astype(dtype_m))
            set_constant(self.model, name, 4, new_var.astype(dtype_v))
            return {}

        self._commit(name, node.op_type, "bn", apply, {"mode": self.bn_mode, "max_mean_shift_in_std": shift})


def _backup(model: onnx.ModelProto, name: str, method: str) -> Snapshot | onnx.ModelProto:
    """What undoes ``method``'s edit at node ``name``: a ``Snapshot`` of what it can change, or
    (a method a snapshot does not cover) a copy of the whole model."""
    if touching(method):
        return Snapshot(model, name)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def residual_skip(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, np.ndarray | None] | None:
    """The skip ``x`` of the residual ``Add(x, g(f))`` that ``node``'s output ``f`` joins, and
    the per-channel gain of ``g`` (None: 1): ``g`` is at most a bias ``Add`` of a constant and an
    inference ``BatchNormalization`` with constant parameters (gain ``scale / sqrt(var + eps)``).
    None if a tensor on the way has other readers or is a graph output, or the Add's other
    input is a constant."""
    tensor, gain = node.output[0], None
    for _ in range(3):
        readers = index.uses.get(tensor, [])
        if len(readers) != 1 or tensor in index.graph_outputs:
            return None
        reader = readers[0][0]
        if reader.op_type == "BatchNormalization" and gain is None and len([o for o in reader.output if o]) == 1:
            params = [index.const(reader.input[i]) if len(reader.input) > i else None for i in (1, 4)]
            if any(p is None for p in params):
                return None
            scale, var = (np.asarray(p, np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
            gain = scale / np.sqrt(var + float(attr(reader, "epsilon", 1e-5)))
        elif reader.op_type == "Add":
            other = reader.input[1] if reader.input[0] == tensor else reader.input[0]
            if not index.is_const(other):
                return other, gain
        else:
            return None
        tensor = reader.output[0]
    return None


def _downstream(index: GraphIndex, nodes: Sequence[str]) -> set[str]:
    """Every tensor computed from an output of ``nodes`` (graph order)."""
    seeds = set(nodes)
    tainted: set[str] = set()
    for node in index.graph.node:
        if node.name in seeds or any(i in tainted for i in node.input if i):
            tainted.update(o for o in node.output if o)
    return tainted


def _refittable(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a mixing layer recovery can refit (``layers.Layer``)."""
    try:
        Layer.of(index, node)
    except Unsupported:
        return False
    return True

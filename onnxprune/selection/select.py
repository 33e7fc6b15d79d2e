"""Turn scores into a plan: how many units each group keeps, and which.

Two modes: ``per-group`` removes the same fraction from every prunable group;
``global`` ranks all units of all groups together (scores divided by their group's
mean, so groups are comparable) and removes the lowest until the channel ratio is
met. Both then round every group's kept channel count up to a multiple of
``round_to`` and respect ``min_channels`` and ``max_ratio``.

``align`` (off by default) is the channel block of the hardware the model will run on: a
kernel that computes channels in blocks of ``align`` pads a kept count up to the next
multiple, so a count between two multiples costs the latency of the one above. With
``align`` a kept count that is not a multiple of it is rounded *down* to one (dropping
the group's lowest-scoring units) whenever that count is still legal (a multiple of
``round_to`` within ``min_channels`` / ``max_ratio``); otherwise it goes *up* to the next
multiple when that still prunes the group (the padded channels would cost as much as kept
ones); a group of a single aligned block is kept whole (an off-block count loses the blocked
kernels: the zoo's conv_lstm ran 0.92x with its 16-channel group cut to 11), and a group that
is already off the block stays as rounded.
onnxruntime's CPU convolutions (MLAS NCHWc) use blocks of 16 channels on AVX-512 and 8 on
AVX2: ``onnxprune.selection.latency.channel_block`` reports the block of this machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import Analysis, Group
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.errors import SelectionError
from onnxprune.plan import Plan

RANKINGS = ("normalised", "per-mac")


@dataclass(frozen=True)
class SelectionOptions:
    ratio: float
    mode: str = "per-group"  # or "global"
    round_to: int = 1
    min_channels: int = 1
    max_ratio: float = 1.0
    align: int = 1
    ranking: str = "normalised"  # or "per-mac" (see global_order)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise SelectionError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.mode not in ("per-group", "global"):
            raise SelectionError(f"mode must be 'per-group' or 'global', got {self.mode!r}")
        if self.round_to < 1:
            raise SelectionError(f"round_to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise SelectionError(f"min_channels must be >= 1, got {self.min_channels}")
        if not 0.0 < self.max_ratio <= 1.0:
            raise SelectionError(f"max_ratio must be in (0, 1], got {self.max_ratio}")
        if self.align < 1:
            raise SelectionError(f"align must be >= 1, got {self.align}")
        if self.ranking not in RANKINGS:
            raise SelectionError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


def select(analysis: Analysis, scores: Mapping[str, np.ndarray], options: SelectionOptions,
           criterion: str | None = None) -> Plan:
    """Choose kept units per prunable group; returns a validated plan."""
    groups = [g for g in analysis.prunable_groups if g.id in scores]
    for g in groups:
        if len(scores[g.id]) != g.size:
            raise SelectionError(f"criterion gave {len(scores[g.id])} scores for group '{g.id}' of {g.size}")
    if options.mode == "global":
        targets = _global_keep_counts(groups, scores, options.ratio, options.ranking)
    else:
        targets = {g.id: g.size - math.floor(g.size * options.ratio) for g in groups}
    keep: dict[str, tuple[int, ...]] = {}
    for g in groups:
        k = legal_keep_count(g, targets[g.id], options)
        if k < g.size:
            order = np.lexsort((np.arange(g.size), -np.asarray(scores[g.id], dtype=np.float64)))
            keep[g.id] = tuple(sorted(order[:k].tolist()))
    keep = repair_keep(analysis, keep, scores)  # a layer keeps a query head of a kept KV head
    from onnxprune.units import plan_options  # units builds on this module's keep rules

    plan = Plan(
        fingerprint=analysis.fingerprint, keep=keep, sizes={gid: analysis.group(gid).size for gid in keep},
        criterion=criterion,
        options=plan_options(options, {"ratio": options.ratio, "mode": options.mode}),
    )
    plan.validate(analysis)
    return plan


def global_order(groups: list[Group], scores: Mapping[str, np.ndarray],
                 ranking: str = "normalised") -> list[tuple[str, int]]:
    """(group id, unit) pairs from least to most important.

    - 'normalised': each group's scores divided by their mean, so one ranking works across
      groups whatever the criterion's scale (magnitudes differ from layer to layer);
    - 'per-mac': the raw score per multiply-accumulate the unit costs (its parameters where
      it costs none), the greedy knapsack order of Kwon et al. 2022. For criteria whose
      scores estimate the loss increase on a common scale (taylor-so / Fisher, taylor-fo,
      oracle): a head worth 128 neurons in FLOPs must be worth 128 of them in loss to stay.
    """
    if ranking not in RANKINGS:
        raise SelectionError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    entries = []
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        if ranking == "per-mac":
            cost = np.where(g.unit_macs > 0, g.unit_macs, np.maximum(g.unit_params, 1)).astype(np.float64)
            normed = s / cost
        else:
            mean = s.mean()
            normed = s / mean if mean > 0 else np.zeros_like(s)
        entries.extend((float(v), g.id, i) for i, v in enumerate(normed))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    return [(gid, i) for _, gid, i in entries]


def _global_keep_counts(groups: list[Group], scores: Mapping[str, np.ndarray], ratio: float,
                        ranking: str = "normalised") -> dict[str, int]:
    width = {g.id: g.unit_width for g in groups}
    budget = ratio * sum(g.channels for g in groups)
    removed: dict[str, int] = {g.id: 0 for g in groups}
    done = 0.0
    for gid, _ in global_order(groups, scores, ranking):
        if done + width[gid] > budget + 1e-9:
            continue
        removed[gid] += 1
        done += width[gid]
    return {g.id: g.size - removed[g.id] for g in groups}


def legal_keep_count(g: Group, k: int, options: SelectionOptions, max_ratio: float | None = None) -> int:
    """Round a kept unit count up so that channels are a multiple of round_to and limits hold;
    with ``options.align`` > 1, then down to a multiple of align channels where that stays legal,
    else up to one where that still prunes the group.
    ``max_ratio``: this group's own limit, where tighter than ``options.max_ratio``."""
    width = g.unit_width
    limit = options.max_ratio if max_ratio is None else min(options.max_ratio, max_ratio)
    floor = max(1, math.ceil(g.size * (1.0 - limit)), math.ceil(options.min_channels / width))
    k = max(k, floor)
    step = options.round_to // math.gcd(options.round_to, width)
    k = min(g.size, math.ceil(k / step) * step)
    if options.align > 1 and k < g.size and (k * width) % options.align:
        a_step = options.align // math.gcd(options.align, width)  # units per aligned block
        down = (k // a_step) * a_step
        if down >= floor and down % step == 0:
            k = down
        else:  # padded channels cost as much as kept ones: keep the whole block instead, where
            # that still prunes the group; a group of one aligned block stays whole (an off-block
            # count loses the blocked kernels: the pruned model would run slower); a group already
            # off the block stays at the legal count below
            up = math.ceil(k / a_step) * a_step
            if up < g.size and up % step == 0:
                k = up
            elif (g.size * width) % options.align == 0:
                k = g.size
    return k


def ranking_option(ranking: str) -> dict[str, str]:
    """The plan-options entry for a global ``ranking`` (absent for the default)."""
    return {"ranking": ranking} if ranking != "normalised" else {}


def align_option(align: int) -> dict[str, int]:
    """The plan-options entry for ``align`` (absent when off, so default plans are unchanged)."""
    return {"align": int(align)} if align > 1 else {}

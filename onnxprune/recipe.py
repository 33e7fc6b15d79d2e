"""A pruning recipe: every choice of a compression run, as one frozen, validated value.

The CLI builds a ``Recipe`` from its flags or a recipe file (TOML or JSON; flags override
the file), the Python API takes one (``onnxprune.compress``), and the plan, the report
and ``--json`` outputs record the resolved recipe. Fields left at ``"auto"`` are chosen by
``resolve`` from the model and the data at hand (see ``resolve`` for the rules), so the
plain command (a budget and, when the user has it, ``--calib``) runs the best recipe
known, and prints it in one line (``Recipe.describe``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from onnxprune.errors import SelectionError

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

AUTO = "auto"
# DATA_FREE_CRITERIA, DATA_DRIVEN_CRITERIA and RECOVERY_METHODS are live views of the registries
# (onnxprune.scoring.criteria, onnxprune.recovery.methods; neither imports torch): see __getattr__
LOSSES = ("auto", "ce", "mse", "pseudo", "fisher", "next-token")  # next-token: a causal LM's own text
REDUCTIONS = ("sum", "mean", "max")
MODES = ("per-group", "global")
RANKINGS = ("normalised", "per-mac", "standardised")  # standardised: FLAP, selection.standardised
LIMITS = ("sensitivity", "none")
# which units a group keeps once its count is fixed: the criterion's best, or FLAP's fluctuation
# inside single-channel groups (a decoder's FFN neurons; selection.budget.reorder_within_groups)
UNIT_ORDERS = ("criterion", "fluctuation")
WEIGHTINGS = ("uniform", "fisher")
# what a refit of a residual branch's last layer matches: the original layer's output, or the
# original residual stream (its output plus the drift of the skip; recovery.recover(residual=))
REFIT_TARGETS = ("layer", "stream")
METHODS = ("criterion", "iterative", "spp", "learned-threshold")
BUDGETS = ("ratio", "target_flops", "target_params", "target_latency")
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


def __getattr__(name: str) -> Any:
    """The registered criteria and recovery methods, read when asked (plugins included)."""
    if name in ("DATA_FREE_CRITERIA", "DATA_DRIVEN_CRITERIA"):
        from onnxprune.scoring.criteria import names

        return names(needs_data=name == "DATA_DRIVEN_CRITERIA")
    if name == "RECOVERY_METHODS":
        return _recovery_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _data_driven(criterion: str) -> bool:
    from onnxprune.scoring.criteria import needs_data

    return needs_data(criterion)


def _recovery_names() -> tuple[str, ...]:
    from onnxprune.recovery.methods import names

    return names()


class RecipeError(SelectionError):
    """A recipe (flags or file) names an unknown key, has a value of the wrong type or out of
    range, or needs something the run does not have (calibration data, a budget)."""


@dataclass(frozen=True)
class Recipe:
    """What to remove, how to choose it, and how to recover; ``"auto"`` fields are resolved
    per model by ``resolve``. Exactly one budget field is set for a run that allocates."""

    # budget: exactly one of these
    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: str | None = None
    # scoring
    criterion: str = AUTO
    loss: str = AUTO
    reduction: str = "sum"
    projections: int | str = AUTO
    flops_reg: float = 0.0
    # allocation
    mode: str = AUTO
    ranking: str = AUTO
    round_to: int = 1
    align: str | int = AUTO
    min_channels: int = 1
    max_ratio: float | str = AUTO  # of a group's units, the fraction removed at most; auto: 1 (a decoder: DECODER_LM)
    limits: str = AUTO  # per-group limits: sensitivity (measured damage), none
    unit_order: str = "criterion"  # which units a group keeps (UNIT_ORDERS); its count comes from the criterion
    ignore: tuple[str, ...] = ()
    prune_hidden: bool = False
    # decoders: KV heads may change a KV cache's input / output shapes (onnxprune.interface);
    # every attention layer keeps as many KV heads and query heads per KV head (runtimes with
    # one head count for all layers: onnxruntime-genai's GroupQueryAttention)
    allow_interface_change: bool = False
    uniform_heads: bool = False
    # 4-bit MatMulNBits: input channels go one by one, the weight dequantised, sliced and
    # quantized again (within quantization error, not exact); default: whole blocks only
    requantize: bool = False
    # depth pruning: residual blocks removed as well as channels: "off", a number of blocks,
    # a fraction in (0, 1) (whole blocks take that share of what the budget removes), or
    # "auto" (see ``resolve``)
    depth: str | int | float = AUTO
    # recovery (post-training, on the calibration data; every refit checked on held-out data)
    recover: str | tuple[str, ...] = AUTO
    ridge: float | str = AUTO
    recovery_weighting: str = AUTO
    holdout: float = 0.25
    augment: bool = False
    refit_target: str = AUTO  # REFIT_TARGETS; auto: stream
    # pruning while training (distillation): criterion (none), iterative, spp, learned-threshold
    method: str = "criterion"
    train_steps: int = 200
    lr: float = 1e-3
    # where the model will run: alignment block and the closing speed measurement
    provider: str = "auto"
    measure: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value)
        if isinstance(self.ignore, list):
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.recover, list):
            object.__setattr__(self, "recover", tuple(self.recover))
        if isinstance(self.recover, str):
            object.__setattr__(self, "recover", _recovery_methods(self.recover))
        _check_values(self)

    # -- budget ------------------------------------------------------------
    @property
    def budgets(self) -> tuple[str, ...]:
        """The budget fields that are set."""
        return tuple(name for name in BUDGETS if getattr(self, name) is not None)

    def require_budget(self) -> str:
        """The one budget field that is set; a RecipeError if none or several are."""
        chosen = self.budgets
        if len(chosen) != 1:
            flags = ", ".join("--" + n.replace("_", "-") for n in BUDGETS)
            got = f" (got {', '.join('--' + n.replace('_', '-') for n in chosen)})" if chosen else ""
            raise RecipeError(f"give exactly one budget: {flags}, or a --plan to replay{got}")
        return chosen[0]

    @property
    def needs_data(self) -> bool:
        """Whether this recipe, as written, cannot run without calibration data."""
        return (_data_driven(self.criterion) or self.method != "criterion"
                or (isinstance(self.recover, tuple) and bool(self.recover)) or self.unit_order == "fluctuation")

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON-ready): unset budget fields are left out, tuples are lists."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """A recipe from plain data; an unknown key or a wrong type is refused, naming it."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source}: a recipe is a table of keys and values")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise RecipeError(f"{source}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        try:
            return cls(**dict(data))
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the recipe as TOML (or JSON for a ``.json`` path), atomically."""
        from onnxprune.io.fileutil import write_text_atomic

        p = Path(path)
        if p.suffix.lower() == ".json":
            return write_text_atomic(p, json.dumps(self.to_dict(), indent=1) + "\n")
        import tomli_w

        return write_text_atomic(p, tomli_w.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a TOML (or ``.json``) recipe file; errors name the file and the key."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"{p}: recipe file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{p}: cannot read the recipe file ({exc.__class__.__name__})") from None
        try:
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RecipeError(f"{p}: not a valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'} "
                              f"recipe ({exc})") from None
        return cls.from_dict(data, source=str(p))

    def merged(self, **overrides: Any) -> Recipe:
        """A copy with ``overrides`` (flags given on the command line win over a file); setting
        one budget clears the others."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if any(k in BUDGETS for k in changes):
            changes = {**{b: None for b in BUDGETS}, **changes}
        return replace(self, **changes)

    # -- description -------------------------------------------------------
    def describe(self) -> str:
        """One line: what this (resolved) recipe does."""
        budget = ", ".join(f"{n.replace('_', ' ')} {getattr(self, n)}" for n in self.budgets) or "replayed plan"
        parts = [budget]
        if self.method != "criterion":
            parts.append(f"{self.method} training ({self.train_steps} steps)")
        scoring = self.criterion + (f" ({self.loss} loss)" if _data_driven(self.criterion) else "")
        if self.loss == "fisher" and _data_driven(self.criterion):
            scoring += f" x{self.projections} projections"
        parts.append(scoring)
        if self.ratio is not None:
            parts.append(self.mode)
        if self.mode == "global" or self.ratio is None:
            parts.append(f"{self.ranking} ranking")
        if not isinstance(self.max_ratio, str) and self.max_ratio < 1.0:
            parts.append(f"at most {self.max_ratio:.0%} of a group")
        if self.limits == "sensitivity":
            parts.append("per-group limits from measured sensitivity")
        parts.append(f"align {self.align}" if self.align != 1 else "no alignment")
        if self.round_to > 1:
            parts.append(f"round to {self.round_to}")
        if self.prune_hidden:
            parts.append("hidden size too")
        if self.unit_order != "criterion":
            parts.append(f"units kept inside neuron groups by {self.unit_order}")
        if self.uniform_heads:
            parts.append("equal head counts in every layer")
        if self.allow_interface_change:
            parts.append("input / output shapes may change")
        if self.requantize:
            parts.append("4-bit weights requantized")
        if isinstance(self.depth, int) and self.depth:
            parts.append(f"{self.depth} residual block{'s' if self.depth > 1 else ''} removed")
        elif isinstance(self.depth, float):
            parts.append(f"whole residual blocks for {self.depth:.0%} of the budget")
        if self.recover:
            weighting = ", fisher-weighted" if self.recovery_weighting == "fisher" else ""
            refits = bool(set(self.recover) & {"lstsq", "scale"})
            target = f", refits to the {self.refit_target}" if refits and self.refit_target != AUTO else ""
            judged = ", judged on next-token KL" if self.loss == "next-token" else ""
            parts.append(f"recovery {'+'.join(self.recover)} (held-out {self.holdout:.0%}{judged}, ridge {self.ridge}"
                         f"{weighting}{target})")
        else:
            parts.append("no recovery")
        return "; ".join(parts)


def _recovery_methods(text: str) -> str | tuple[str, ...]:
    text = text.strip().lower()
    if text == AUTO:
        return AUTO
    if text in ("", "none"):
        return ()
    if text == "all":
        return _recovery_names()
    return tuple(m.strip() for m in text.split(",") if m.strip())


# the accepted types of each field: a value of another type is refused, naming the field
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "ratio": (*_NUMBER, type(None)), "target_flops": (*_NUMBER, type(None)),
    "target_params": (*_NUMBER, type(None)), "target_latency": (str, *_NUMBER, type(None)),
    "criterion": (str,), "loss": (str,), "reduction": (str,), "projections": (str, int), "flops_reg": _NUMBER,
    "mode": (str,), "ranking": (str,), "round_to": (int,), "align": (str, int), "min_channels": (int,),
    "max_ratio": (str, *_NUMBER), "limits": (str,), "ignore": (tuple, list), "prune_hidden": (bool,), "depth": (str, *_NUMBER),
    "unit_order": (str,),
    "allow_interface_change": (bool,), "uniform_heads": (bool,), "requantize": (bool,),
    "recover": (str, tuple, list),
    "ridge": (str, *_NUMBER), "recovery_weighting": (str,), "holdout": _NUMBER, "augment": (bool,),
    "refit_target": (str,),
    "method": (str,), "train_steps": (int,), "lr": _NUMBER, "provider": (str,), "measure": (bool,),
}
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               tuple: "a list", list: "a list", type(None): "unset"}


def _check_type(name: str, value: Any) -> None:
    accepted = _TYPES[name]
    ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
    if ok and isinstance(value, (tuple, list)):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        words = " or ".join(dict.fromkeys(_TYPE_WORDS[t] for t in accepted))
        raise RecipeError(f"'{name}' must be {words}, got {value!r}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(f"unknown {name.replace('_', ' ')} {value!r} (--{name.replace('_', '-')}: choose from "
                          f"{', '.join(choices)})")


def _check_values(r: Recipe) -> None:
    if r.ratio is not None and not 0.0 <= r.ratio < 1.0:
        raise RecipeError(f"'ratio' must be in [0, 1), got {r.ratio}")
    for name in ("target_flops", "target_params"):
        value = getattr(r, name)
        if value is not None and value <= 0:
            raise RecipeError(f"'{name}' must be positive (a fraction <= 1 or an absolute count), got {value}")
    from onnxprune.scoring.criteria import names as criteria

    _one_of("criterion", r.criterion, (AUTO, *criteria(needs_data=False), *criteria(needs_data=True)))
    _one_of("loss", r.loss, LOSSES)
    _one_of("reduction", r.reduction, REDUCTIONS)
    _one_of("mode", r.mode, (AUTO, *MODES))
    _one_of("ranking", r.ranking, (AUTO, *RANKINGS))
    _one_of("limits", r.limits, (AUTO, *LIMITS))
    _one_of("unit_order", r.unit_order, UNIT_ORDERS)
    _one_of("recovery_weighting", r.recovery_weighting, (AUTO, *WEIGHTINGS))
    _one_of("refit_target", r.refit_target, (AUTO, *REFIT_TARGETS))
    _one_of("method", r.method, METHODS)
    _one_of("provider", r.provider, PROVIDERS)
    if isinstance(r.projections, str) and r.projections != AUTO:
        raise RecipeError(f"'projections' must be a positive integer or 'auto', got {r.projections!r}")
    if isinstance(r.projections, int) and r.projections < 1:
        raise RecipeError(f"'projections' must be >= 1, got {r.projections}")
    if r.round_to < 1:
        raise RecipeError(f"'round_to' must be >= 1, got {r.round_to}")
    if r.min_channels < 1:
        raise RecipeError(f"'min_channels' must be >= 1, got {r.min_channels}")
    if isinstance(r.max_ratio, str) and r.max_ratio != AUTO:
        raise RecipeError(f"'max_ratio' must be a fraction in (0, 1] or 'auto', got {r.max_ratio!r}")
    if not isinstance(r.max_ratio, str) and not 0.0 < r.max_ratio <= 1.0:
        raise RecipeError(f"'max_ratio' must be in (0, 1], got {r.max_ratio}")
    if isinstance(r.align, str) and r.align != AUTO:
        try:
            object.__setattr__(r, "align", int(r.align))
        except ValueError:
            raise RecipeError(f"'align' must be a positive integer or 'auto', got {r.align!r}") from None
    if isinstance(r.align, int) and r.align < 1:
        raise RecipeError(f"'align' must be a positive integer or 'auto', got {r.align}")
    _check_depth(r)
    if isinstance(r.ridge, str) and r.ridge != AUTO:
        raise RecipeError(f"'ridge' must be a number or 'auto', got {r.ridge!r}")
    if not isinstance(r.ridge, str) and r.ridge < 0:
        raise RecipeError(f"'ridge' must be >= 0, got {r.ridge}")
    if r.recover != AUTO:
        known = _recovery_names()
        unknown = [m for m in r.recover if m not in known]
        if unknown:
            raise RecipeError(f"'recover': unknown method(s) {', '.join(unknown)} "
                              f"(choose from {', '.join(known)}, all, none or auto)")
    if not 0.0 <= r.holdout < 1.0:
        raise RecipeError(f"'holdout' must be in [0, 1), got {r.holdout}")
    if r.train_steps < 1:
        raise RecipeError(f"'train_steps' must be >= 1, got {r.train_steps}")
    if r.lr <= 0:
        raise RecipeError(f"'lr' must be positive, got {r.lr}")
    if r.target_latency is not None:
        object.__setattr__(r, "target_latency", str(r.target_latency))


def _check_depth(r: Recipe) -> None:
    """'auto', 'off', a number of blocks (>= 0) or a fraction in (0, 1); text from a flag is parsed."""
    words = f"'depth' must be 'auto', 'off', a number of blocks or a fraction of the budget in (0, 1), got {r.depth!r}"
    if isinstance(r.depth, str) and r.depth not in (AUTO, "off"):
        try:
            value: float = float(r.depth)
        except ValueError:
            raise RecipeError(words) from None
        object.__setattr__(r, "depth", int(value) if value.is_integer() else value)
    if isinstance(r.depth, float) and r.depth.is_integer():
        object.__setattr__(r, "depth", int(r.depth))
    if (isinstance(r.depth, int) and r.depth < 0) or (isinstance(r.depth, float) and not 0.0 < r.depth < 1.0):
        raise RecipeError(words)


# the auto recipe of a decoder LM with calibration windows (``is_causal_lm``), measured on
# SmolLM2-135M at 20% of the non-embedding parameters (docs/llm.md)
DECODER_LM: dict[str, Any] = {"criterion": "taylor-so", "ranking": "per-mac",
                               "recover": ("lstsq", "bias", "temperature"),
                               "depth": 0.25, "max_ratio": 0.35}


@dataclass(frozen=True)
class Context:
    """What ``resolve`` looks at: the data at hand and what the model is."""

    has_calib: bool = False
    align_block: int = 1
    transformer: bool = False  # attention (Softmax) and no convolution: see ``is_transformer``
    causal_lm: bool = False  # token ids in, logits over the vocabulary out: see ``is_causal_lm``


def resolve(recipe: Recipe, ctx: Context) -> Recipe:
    """The concrete recipe: every ``"auto"`` replaced by the choice for this model and data.

    - criterion: with calibration data, ``taylor-fo`` (the loss change of removing a unit,
      Molchanov 2019; label-free through the model's own predictions or a Fisher estimate);
      without, ``l2`` magnitude;
    - mode (for ``ratio``): ``global`` ranking with data (scores comparable across groups),
      ``per-group`` without; ranking: ``per-mac`` (score per MAC saved, a knapsack order,
      Kwon et al. 2022) with data, ``normalised`` without;
    - align: the channel block of the target provider (onnxruntime CPU: 16 on AVX-512, 8 on
      AVX2), so no kept count pays for padded channels;
    - loss: the label-free ``fisher`` loss for Taylor scores (EfficientNet-Lite0: agreement
      0.375 against 0.32 with pseudo-labels, before recovery);
    - limits (budgets, CNNs, with data): ``sensitivity``: each group's damage measured at 25%,
      50% and 75% removal, scores rescaled to it, and per-group caps
      (``onnxprune.selection.sensitivity_limits.allocate``; EfficientNet-Lite0 at 0.75 of the MACs,
      the object photographs of ``benchmarks.efficientnet_lite``: agreement 0.031 -> 0.656 with lstsq);
    - recover: ``lstsq`` refits (which include the bias) when there is data, each accepted
      only if it lowers the error on held-out samples (``bn``, ``bias`` on request);
    - transformers with data (``is_transformer``): Kwon et al. 2022: ``taylor-so`` with the
      label-free ``fisher`` loss over 8 projections, Fisher-weighted ``lstsq`` + ``scale``
      refits (on MiniLM at 0.67 of the MACs: held-out cosine 0.955 against 0.934);
    - ridge: chosen per layer on the held-out samples;
    - decoder LMs with data (``is_causal_lm``): ``DECODER_LM``: ``taylor-so`` (each window's
      gate gradient squared) under the next-token cross-entropy of the windows (``loss =
      "next-token"``), ``per-mac`` ranking,
      a quarter of the cut in whole residual blocks (``depth = 0.25``, Block Influence), no
      group losing more than 35% of its units (``max_ratio = 0.35``), then ``lstsq`` refits of
      the consumers of the removed channels (o_proj, down_proj) to the residual stream, FLAP's
      ``bias`` compensation where a refit is refused, every step judged on the held-out
      next-token KL divergence (``recover(held_metric="kl")``), and one ``temperature`` on the
      logits fitted to the original's distribution on the held-out windows, kept if its
      cross-fitted KL is lower (``recovery.temperature``); on SmolLM2-135M at 20% of the
      non-embedding parameters held-out perplexity 19.8 against 20.0 with ``taylor-fo``
      (pairs of windows summed before squaring), 20.3 without the cap, 20.6
      judged on the logits' MSE, 21.1 with channels only (with refits to each layer's output
      the blocks cost more: 28.3 against 24.4), 37.7 with no recovery, 1,580 for FLAP's
      allocation of its fluctuation scores before compensation (docs/llm.md);
    - refit target: ``stream``: a refitted layer whose output joins a residual stream matches
      the original's stream (its output plus the skip's drift), so each block also corrects
      what the blocks before it left (SmolLM2: held-out perplexity 24.43 -> 21.14 with the
      same plan; EfficientNet-Lite0: no change); ``layer``: the original layer's output only;
    - depth: ``off`` except a decoder LM's budget (a quarter): residual blocks go only when asked (``depth = N`` blocks, or a fraction
      of what the budget removes).
    """
    if recipe.needs_data and not ctx.has_calib:
        what = (recipe.criterion if _data_driven(recipe.criterion) else
                f"{recipe.method} training" if recipe.method != "criterion" else
                "--unit-order fluctuation" if recipe.unit_order == "fluctuation" else "recovery")
        raise RecipeError(f"{what} needs calibration data: give --calib")
    if recipe.unit_order != "criterion" and recipe.method != "criterion":
        raise RecipeError(f"--unit-order {recipe.unit_order} applies to criterion pruning, not to --method "
                          f"{recipe.method}")
    data = ctx.has_calib
    lm = data and ctx.causal_lm  # decoder LMs: DECODER_LM's recipe (docs/llm.md)
    kwon = data and ctx.transformer and not lm  # Kwon et al. 2022's post-training recipe for transformers
    criterion = recipe.criterion if recipe.criterion != AUTO else (
        DECODER_LM["criterion"] if lm else "taylor-so" if kwon else "taylor-fo" if data else "l2")
    loss = recipe.loss if recipe.loss != AUTO or criterion not in ("taylor-so", "taylor-fo") or not data else (
        "next-token" if lm and criterion in ("taylor-fo", "taylor-so") else "fisher")
    projections = recipe.projections if recipe.projections != AUTO else (8 if kwon and loss == "fisher" else 1)
    weighting = recipe.recovery_weighting if recipe.recovery_weighting != AUTO else ("fisher" if kwon else "uniform")
    data_scores = _data_driven(criterion)
    mode = recipe.mode if recipe.mode != AUTO else ("global" if data_scores else "per-group")
    ranking = recipe.ranking if recipe.ranking != AUTO else (
        DECODER_LM["ranking"] if lm and criterion == DECODER_LM["criterion"] else
        "per-mac" if data_scores else "normalised")
    align = recipe.align if recipe.align != AUTO else ctx.align_block
    recover = recipe.recover
    if recover == AUTO:
        recover = (() if not data or recipe.method != "criterion" else DECODER_LM["recover"] if lm
                   else ("lstsq", "scale") if kwon
                   else ("lstsq",))
    budget_metric = recipe.target_flops is not None or recipe.target_params is not None
    limits = recipe.limits if recipe.limits != AUTO else (
        "sensitivity" if data and not ctx.transformer and budget_metric and data_scores
        else "none")
    depth = recipe.depth if recipe.depth != AUTO else (
        DECODER_LM["depth"] if lm and budget_metric else "off")
    if not isinstance(depth, str) and depth:
        if not data:
            raise RecipeError("depth pruning (--depth) scores blocks on calibration data: give --calib")
        if recipe.ratio is not None or recipe.target_latency is not None:
            raise RecipeError("--depth applies to a --target-flops or --target-params budget")
    refit_target = recipe.refit_target if recipe.refit_target != AUTO else "stream"
    max_ratio = recipe.max_ratio if recipe.max_ratio != AUTO else (
        DECODER_LM["max_ratio"] if lm and budget_metric and mode == "global" else 1.0)
    return replace(recipe, criterion=criterion, loss=loss, projections=projections, mode=mode, ranking=ranking,
                   align=align, recover=recover, recovery_weighting=weighting, limits=limits, depth=depth,
                   refit_target=refit_target, max_ratio=max_ratio)


def is_transformer(model: "onnx.ModelProto") -> bool:
    """Attention (a Softmax) and no convolution: the auto recipe then follows Kwon et al. 2022."""
    ops = {n.op_type for n in model.graph.node}
    return "Softmax" in ops and not ops & {"Conv", "ConvTranspose"}


def is_causal_lm(model: "onnx.ModelProto") -> bool:
    """A decoder language model: a 2-D integer token input (``input_ids`` first) read by the
    Gather of an embedding table with V rows, and a float output [batch, seq, V] (the logits
    over the vocabulary), in a transformer (``is_transformer``)."""
    import onnx

    if not is_transformer(model):
        return False
    ints = [i for i in model.graph.input if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64,
                                                                            onnx.TensorProto.INT32)
            and len(i.type.tensor_type.shape.dim) == 2]
    named = [i for i in ints if i.name == "input_ids"]
    if not (named or ints):
        return False
    ids = (named or ints)[0].name
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    rows = {shapes[n.input[0]][0] for n in model.graph.node
            if n.op_type == "Gather" and n.input[1] == ids and len(shapes.get(n.input[0], ())) == 2}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return any(o.type.tensor_type.elem_type in floats and len(o.type.tensor_type.shape.dim) == 3
               and o.type.tensor_type.shape.dim[2].dim_value in rows for o in model.graph.output)


def provider_name(recipe: Recipe) -> str:
    """The onnxruntime provider the recipe targets (``auto``: CUDA where available)."""
    from onnxprune.runtime.session import resolve_provider

    return resolve_provider(recipe.provider)

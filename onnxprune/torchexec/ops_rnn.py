"""Recurrent ops (LSTM, GRU, RNN) with ONNX gate layouts, a Python loop over time steps only.

The input projections of all steps are one matmul; each step is a few batched tensor
ops. ``sequence_lens`` is honoured with masks (finished sequences keep their state and
emit zeros); the reverse direction reverses every sequence within its own length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from onnxprune.torchexec.ops import Node, op

Act = Callable[[torch.Tensor], torch.Tensor]

# name -> (uses alpha, uses beta, default alpha, default beta, factory)
_ACTIVATIONS: dict[str, tuple[bool, bool, float, float, Callable[[float, float], Act]]] = {
    "sigmoid": (False, False, 0, 0, lambda a, b: torch.sigmoid),
    "tanh": (False, False, 0, 0, lambda a, b: torch.tanh),
    "relu": (False, False, 0, 0, lambda a, b: torch.relu),
    "affine": (True, True, 1.0, 0.0, lambda a, b: lambda x: a * x + b),
    "leakyrelu": (True, False, 0.01, 0, lambda a, b: lambda x: F.leaky_relu(x, a)),
    "thresholdedrelu": (True, False, 1.0, 0, lambda a, b: lambda x: torch.where(x > a, x, torch.zeros_like(x))),
    "scaledtanh": (True, True, 1.0, 1.0, lambda a, b: lambda x: a * torch.tanh(b * x)),
    "hardsigmoid": (True, True, 0.2, 0.5, lambda a, b: lambda x: torch.clamp(a * x + b, 0.0, 1.0)),
    "elu": (True, False, 1.0, 0, lambda a, b: lambda x: F.elu(x, a)),
    "softsign": (False, False, 0, 0, lambda a, b: F.softsign),
    "softplus": (False, False, 0, 0, lambda a, b: F.softplus),
}


def _activations(n: Node, defaults: list[str], directions: int) -> list[list[Act]]:
    """Per direction, the activation functions (alphas/betas consumed in order)."""
    names = n.attr("activations") or defaults * directions
    if len(names) == len(defaults):
        names = list(names) * directions
    alphas, betas = list(n.attr("activation_alpha", [])), list(n.attr("activation_beta", []))
    fns = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise n.error(f"activation '{name}' is not supported")
        uses_a, uses_b, da, db, make = _ACTIVATIONS[key]
        a = alphas.pop(0) if uses_a and alphas else da
        b = betas.pop(0) if uses_b and betas else db
        fns.append(make(a, b))
    k = len(defaults)
    return [fns[d * k:(d + 1) * k] for d in range(directions)]


def _directions(n: Node) -> list[bool]:
    """For each direction: True when it runs backwards in time."""
    direction = n.attr("direction", "forward")
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _reverse_index(seq_len: int, lens: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """[T, B] index reversing every sequence within its own length (padding stays put)."""
    t = torch.arange(seq_len, device=device).reshape(-1, 1).expand(seq_len, batch)
    if lens is None:
        return seq_len - 1 - t
    lens = lens.to(device).long().reshape(1, -1)
    return torch.where(t < lens, lens - 1 - t, t)


def _time_gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [T, B, ...] reordered per batch column by index [T, B]."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, idx)


def _run(n: Node, x, w, r, b, lens, initial: list[torch.Tensor | None], gates: int,
         defaults: list[str], step):
    """Shared driver: returns (Y [T, D, B, H], [final states [D, B, H] per state])."""
    if n.attr("layout", 0):  # batch-major: X [B, T, I], initial states [B, D, H]
        x = x.transpose(0, 1)
        initial = [s.transpose(0, 1) if s is not None else None for s in initial]
    seq_len, batch = x.shape[0], x.shape[1]
    hidden = n.attr("hidden_size") or r.shape[-1]
    dirs = _directions(n)
    acts = _activations(n, defaults, len(dirs))
    clip = n.attr("clip")
    ys, finals = [], [[] for _ in initial]
    valid = None
    if lens is not None:
        valid = torch.arange(seq_len, device=x.device).reshape(-1, 1) < lens.to(x.device).long().reshape(1, -1)
    for d, backwards in enumerate(dirs):
        xd = _time_gather(x, _reverse_index(seq_len, lens, batch, x.device)) if backwards else x
        proj = torch.matmul(xd, w[d].transpose(0, 1))  # [T, B, gates*H]
        wb = rb = None
        if b is not None:
            wb, rb = b[d, : gates * hidden], b[d, gates * hidden:]
        states = [s[d] if s is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
                  for s in initial]
        outs = []
        for t in range(seq_len):
            new = step(proj[t], states, r[d], wb, rb, acts[d], clip, d)
            if valid is not None:
                keep = valid[t].reshape(-1, 1)
                outs.append(torch.where(keep, new[0], torch.zeros_like(new[0])))
                new = [torch.where(keep, s_new, s_old) for s_new, s_old in zip(new, states)]
            else:
                outs.append(new[0])
            states = new
        y = torch.stack(outs)  # [T, B, H]
        if backwards:
            y = _time_gather(y, _reverse_index(seq_len, lens, batch, x.device))
        ys.append(y)
        for i, s in enumerate(states):
            finals[i].append(s)
    y = torch.stack(ys, dim=1)  # [T, D, B, H]
    final = [torch.stack(f) for f in finals]  # [D, B, H]
    if n.attr("layout", 0):
        y = y.permute(2, 0, 1, 3)  # [B, T, D, H]
        final = [f.transpose(0, 1) for f in final]
    return y, final


def _clip(v: torch.Tensor, clip: float | None) -> torch.Tensor:
    return v if clip is None else torch.clamp(v, -clip, clip)


def _outputs(n: Node, y: torch.Tensor, final: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    return tuple([y if n.wants(0) else None] + [f if n.wants(i + 1) else None for i, f in enumerate(final)])


@op("LSTM")
def lstm(n: Node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    input_forget = bool(n.attr("input_forget", 0))

    def step(xw, states, rd, wb, rb, acts, clip, d):
        h, c = states
        f_act, g_act, h_act = acts
        g = xw + h @ rd.transpose(0, 1)
        if wb is not None:
            g = g + wb + rb
        gi, go, gf, gc = g.chunk(4, dim=-1)  # ONNX gate order: i, o, f, c
        if p is not None:
            pi, po, pf = p[d].chunk(3)
            gi, gf = gi + pi * c, gf + pf * c
        i = f_act(_clip(gi, clip))
        f = 1 - i if input_forget else f_act(_clip(gf, clip))
        c_new = f * c + i * g_act(_clip(gc, clip))
        if p is not None:
            go = go + po * c_new
        o = f_act(_clip(go, clip))
        return [o * h_act(c_new), c_new]

    y, final = _run(n, x, w, r, b, lens, [h0, c0], 4, ["Sigmoid", "Tanh", "Tanh"], step)
    return _outputs(n, y, final)


@op("GRU")
def gru(n: Node, x, w, r, b=None, lens=None, h0=None):
    before_reset = bool(n.attr("linear_before_reset", 0))

    def step(xw, states, rd, wb, rb, acts, clip, d):
        (h,) = states
        f_act, g_act = acts
        hidden = h.shape[-1]
        xz, xr, xh = xw.chunk(3, dim=-1)  # ONNX gate order: z, r, h
        if wb is not None:
            wbz, wbr, wbh = wb.chunk(3)
            rbz, rbr, rbh = rb.chunk(3)
            xz, xr, xh = xz + wbz + rbz, xr + wbr + rbr, xh + wbh
        else:
            rbh = None
        rz, rr, rh = rd[:hidden], rd[hidden:2 * hidden], rd[2 * hidden:]
        z = f_act(_clip(xz + h @ rz.transpose(0, 1), clip))
        rgate = f_act(_clip(xr + h @ rr.transpose(0, 1), clip))
        if before_reset:
            hr = h @ rh.transpose(0, 1)
            if rbh is not None:
                hr = hr + rbh
            hh = g_act(_clip(xh + rgate * hr, clip))
        else:
            hr = (rgate * h) @ rh.transpose(0, 1)
            if rbh is not None:
                hr = hr + rbh
            hh = g_act(_clip(xh + hr, clip))
        return [(1 - z) * hh + z * h]

    y, final = _run(n, x, w, r, b, lens, [h0], 3, ["Sigmoid", "Tanh"], step)
    return _outputs(n, y, final)


@op("RNN")
def rnn(n: Node, x, w, r, b=None, lens=None, h0=None):
    def step(xw, states, rd, wb, rb, acts, clip, d):
        (h,) = states
        g = xw + h @ rd.transpose(0, 1)
        if wb is not None:
            g = g + wb + rb
        return [acts[0](_clip(g, clip))]

    y, final = _run(n, x, w, r, b, lens, [h0], 1, ["Tanh"], step)
    return _outputs(n, y, final)

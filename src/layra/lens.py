"""Logit lens: in which language is each layer's residual stream?

    tmap = token_language_map(tok, texts)                    # layra.tokenlang
    profile = lens_profile(model, tok, texts, tmap, english="eng")
    k, m, why = suggest_km(profile)                          # or suggest_km("profile.json")

Each residual-stream state (the embedding output entering block 1, then the
output of every block) is sent through the model's own final norm and LM head
(``layra.arch.unembed``: soft-cap and tied heads included). For every text
position the lens gives a next-token distribution; we record how much of its
probability mass falls on the tokens of the text's language and on English
tokens (the token→language map of ``layra.tokenlang``), averaged over positions.
The state after the last block through the lens *is* the model's output, so the
last row of a profile is the model's own next-token mass.

``suggest_km`` turns a profile into LayRA's k (first blocks, still in the
language) and m (last blocks, returning to it); the rule is in its docstring and
docs/lens.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from layra.arch import decoder_layers, describe, unembed, unwrap
from layra.errors import LayraError, require
from layra.fingerprint import model_fingerprint
from layra.tokenlang import TokenMap

FORMAT = "layra-lens-profile"
VERSION = 1
THRESHOLD = 0.5  # a state is "language-general" below half the final own-language mass
MIN_FINAL_MASS = 0.01  # below this the model does not produce the language: no signal
PAPER_KM = (10, 2, 32)  # the paper's k, m for 32 layers, the fallback in proportion


def residual_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The residual stream before block 1 and after each block: ``num_layers + 1`` tensors.

    Taken with hooks on the decoder blocks, not from ``output_hidden_states``:
    in transformers 5 the last of ``hidden_states`` is already final-normed (it
    is ``last_hidden_state``) while the others are not, and that has differed
    across versions and architectures. Hooks see the raw stream everywhere; the
    first state includes Gemma's sqrt(hidden) embedding scale, as block 1 sees it.
    Runs the base model only, so no full-vocabulary logits are built here.
    """
    hf = unwrap(model)
    blocks = decoder_layers(hf)
    states: list[torch.Tensor] = []

    def before_first(_mod, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def after(_mod, _args, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    handles = [blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [b.register_forward_hook(after) for b in blocks]
    try:
        with torch.no_grad():
            hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    require(
        len(states) == len(blocks) + 1,
        f"logit lens: expected {len(blocks) + 1} residual states, hooks saw {len(states)}",
    )
    return [s.detach() for s in states]


def set_masses(
    model: nn.Module, hidden: torch.Tensor, token_sets: Sequence[torch.Tensor], chunk: int = 128
) -> torch.Tensor:
    """Per position, the lens's probability mass on each token set: ``[positions, sets]``.

    ``hidden`` is ``[positions, hidden]``. Mass on a set S is
    ``exp(logsumexp(logits[S]) - logsumexp(logits))``, in float32, ``chunk``
    positions at a time so a 262k vocabulary never needs all logits at once.
    An empty set has mass 0.
    """
    out = []
    for start in range(0, hidden.shape[0], chunk):
        with torch.no_grad():
            logits = unembed(model, hidden[start : start + chunk]).float()
        total = torch.logsumexp(logits, dim=-1)
        cols = []
        for ids in token_sets:
            if ids.numel() == 0:
                cols.append(torch.zeros_like(total))
            else:
                cols.append(torch.exp(torch.logsumexp(logits[:, ids], dim=-1) - total))
        out.append(torch.stack(cols, dim=-1))
    return torch.cat(out)


def _windows(ids: list[int], window: int, bos: int | None) -> list[list[int]]:
    """Split ids into model inputs of at most ``window`` tokens, each starting with BOS if used."""
    if bos is not None and ids and ids[0] == bos:
        body, step = ids[1:], window - 1
        return [[bos] + body[i : i + step] for i in range(0, len(body), step)] or [[bos]]
    return [ids[i : i + window] for i in range(0, len(ids), window)]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _mass_sums(hf, ids: list[int], sets, window: int, bos_special, chunk: int):
    """Per layer, the summed next-token mass on each id set over the non-special positions
    of ``ids`` (run in windows): a float64 ``(layers + 1, len(sets))`` tensor, and the count."""
    bos, special = bos_special
    device = next(hf.parameters()).device
    sums = torch.zeros(describe(hf).num_layers + 1, len(sets), dtype=torch.float64)
    count = 0
    for win in _windows(ids, window, bos):
        keep = torch.tensor([t not in special for t in win], device=device)
        if not keep.any():
            continue
        states = residual_states(hf, torch.tensor([win], device=device))
        for layer, h in enumerate(states):
            m = set_masses(hf, h[0][keep], sets, chunk=chunk)
            sums[layer] += m.sum(0).double().cpu()
        count += int(keep.sum())
    return sums, count


def _check_lens_args(texts, token_map: TokenMap, english: str, max_tokens: int, window: int):
    require(
        english in texts,
        f"the lens needs English text too (--text {english}=PATH): "
        "it defines which tokens are English",
    )
    require(english in token_map.ids, f"the token map has no language {english!r}")
    require(max_tokens >= 2 and window >= 2, "max_tokens and window must be at least 2")


def lens_profile(
    model: nn.Module,
    tokenizer,
    texts: Mapping[str, str],
    token_map: TokenMap,
    english: str = "eng",
    max_tokens: int = 512,
    window: int = 256,
    chunk: int = 128,
) -> dict:
    """The logit-lens language profile of ``model`` on ``texts`` (language -> text).

    Returns a JSON-able dict: ``own_mass[L][l]`` and ``english_mass[L][l]`` are the
    mean next-token mass on L's tokens and on English tokens at layer ``l``
    (0 = embedding output, i = output of block i, num_layers = the model's own
    output), over the first ``max_tokens`` tokens of L's text, run in windows of
    ``window`` tokens. Positions whose input token is special (BOS) are left out.
    Also records the model fingerprint, text hashes and the token map's rule. Puts the
    model in eval mode (dropout off).
    """
    _check_lens_args(texts, token_map, english, max_tokens, window)
    hf = unwrap(model)
    hf.eval()
    n_layers = describe(hf).num_layers
    device = next(hf.parameters()).device
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    skip = (getattr(tokenizer, "bos_token_id", None), special)
    eng_ids = torch.tensor(token_map.ids[english], dtype=torch.long, device=device)
    own_mass, english_mass, text_info = {}, {}, {}  # per language
    for lang, text in texts.items():
        require(lang in token_map.ids, f"the token map has no language {lang!r}")
        ids = tokenizer(text)["input_ids"][:max_tokens]
        own_ids = torch.tensor(token_map.ids[lang], dtype=torch.long, device=device)
        sums, count = _mass_sums(hf, ids, [own_ids, eng_ids], window, skip, chunk)
        require(count > 0, f"the text for {lang} has no non-special tokens")
        means = (sums / count).tolist()
        own_mass[lang] = [round(r[0], 6) for r in means]
        english_mass[lang] = [round(r[1], 6) for r in means]
        text_info[lang] = {
            "sha256": text_sha256(text),
            "chars": len(text),
            "tokens_used": len(ids),
            "positions": count,
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": model_fingerprint(hf, tokenizer),
        "model_type": describe(hf).model_type,
        "num_layers": n_layers,
        "layers": "0 = embedding output (input to block 1); i = output of block i; "
        f"{n_layers} = the model's own output",
        "english": english,
        "languages": list(texts),
        "own_mass": own_mass,
        "english_mass": english_mass,
        "texts": text_info,
        "token_map": token_map.summary(),
        "settings": {"max_tokens": max_tokens, "window": window},
    }


def load_profile(path: str | Path) -> dict:
    """Read a profile written by ``layra lens``; LayraError if it is not one."""
    path = Path(path)
    require(path.is_file(), f"lens profile {path} does not exist")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayraError(f"{path} is not JSON: {e}") from e
    require(
        isinstance(profile, dict) and profile.get("format") == FORMAT,
        f'{path} is not a layra lens profile (no "format": "{FORMAT}")',
    )
    return profile


def _relative_curves(own, langs, n: int, min_final_mass: float):
    """``s_L(l)`` per usable language (see :func:`suggest_km`), and why others were skipped."""
    curves: dict[str, list[float]] = {}
    notes: list[str] = []
    for lang in langs:
        require(lang in own, f"language {lang!r} is not in the profile ({', '.join(own)})")
        values = own[lang]
        require(
            len(values) == n + 1, f"profile for {lang} has {len(values)} layers, expected {n + 1}"
        )
        if values[n] < min_final_mass:
            notes.append(
                f"{lang} skipped: output own-language mass {values[n]:.4f} < {min_final_mass}"
            )
            continue
        curves[lang] = [v / values[n] for v in values]
    return curves, notes


def suggest_km(
    profile: Mapping | str | Path,
    languages: Sequence[str] | None = None,
    threshold: float = THRESHOLD,
    min_final_mass: float = MIN_FINAL_MASS,
) -> tuple[int, int, str]:
    """LayRA's k and m from a lens profile (a dict or a path to one), with the reasons.

    The rule. For each language L (default: all but English) let
    ``s_L(l) = own_mass[L][l] / own_mass[L][N]``: the own-language mass at layer l
    relative to the model's output (N = num_layers). Languages whose output mass
    is below ``min_final_mass`` are skipped (the model does not produce them, so
    their curve is noise). ``s(l)`` is the mean of ``s_L(l)`` over the rest.
    A state is *language-general* if ``s(l) < threshold`` (default 0.5), for
    l = 1 .. N-1. With a = the first and b = the last such layer, blocks a+1 .. b
    map general states to general states and stay frozen; blocks 1 .. a (which
    lead into the general space) and b+1 .. N (which lead out of it) are trained:

        k = a,  m = N - b          (so k >= 1, m >= 1, k + m <= N)

    If no layer is language-general, the profile gives no evidence and the
    paper's proportions are used: k = round(10/32 N), m = round(2/32 N), each at
    least 1. Raises LayraError if no language is usable.
    """
    if not isinstance(profile, Mapping):
        profile = load_profile(profile)
    require(0 < threshold < 1, f"threshold must be between 0 and 1 (got {threshold})")
    try:
        n = int(profile["num_layers"])
        english = profile.get("english")
        own = profile["own_mass"]
    except (KeyError, TypeError, ValueError) as e:
        raise LayraError(f"lens profile lacks {e}") from e
    langs = list(languages) if languages else [lang for lang in own if lang != english]
    require(langs, "the profile has no language other than English to suggest k and m from")
    curves, notes = _relative_curves(own, langs, n, min_final_mass)
    require(curves, "no usable language in the profile: " + "; ".join(notes))
    s = [sum(c[i] for c in curves.values()) / len(curves) for i in range(n + 1)]
    curve_text = " ".join(f"{i}:{v:.2f}" for i, v in enumerate(s))
    low = [i for i in range(1, n) if s[i] < threshold]
    lines = [f"relative own-language mass s(l) over {', '.join(curves)}: {curve_text}", *notes]
    if not low:
        k0, m0, depth = PAPER_KM
        k, m = max(1, round(k0 * n / depth)), max(1, round(m0 * n / depth))
        lines.append(
            f"no layer has s < {threshold}: no language-general middle found; "
            f"falling back to the paper's proportions ({k0}/{depth}, {m0}/{depth} of {n} layers): "
            f"k={k}, m={m}"
        )
        return k, m, "\n".join(lines)
    a, b = low[0], low[-1]
    k, m = a, n - b
    frozen = f"blocks {a + 1}..{b} frozen" if b > a else "no block frozen"
    lines.append(
        f"language-general (s < {threshold}) from layer {a} to {b} of {n}: "
        f"k={k} (blocks 1..{a}), m={m} (blocks {b + 1}..{n}), {frozen}"
    )
    return k, m, "\n".join(lines)

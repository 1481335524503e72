"""Bits per byte of a causal LM on held-out text, comparable across tokenizers.

    layra eval bpb MODEL --text glg=heldout/gl.txt --text eng=heldout/en.txt

What is measured, exactly:

1. **Documents.** The file is UTF-8 text whose documents are paragraphs separated by
   blank (empty or whitespace-only) lines — the format of a run's ``heldout/LANG.txt``.
   Each document is stripped; empty ones are dropped. With ``max_bytes`` the first
   documents whose UTF-8 sizes add up to at most ``max_bytes`` are kept (the first
   document alone, cut at a character boundary, if it is larger).
2. **Tokens.** Each document is tokenised on its own, without special tokens (text
   that looks like ``<eos>`` stays text). The documents' tokens are concatenated into
   one stream with EOS between consecutive documents, as a separator that is never
   scored.
3. **Windows.** The stream is cut into consecutive, non-overlapping windows of
   ``seq_len - 1`` tokens; each is fed as ``[START] + window`` where START is BOS (EOS
   if the tokenizer has none). So every document token is predicted exactly once,
   conditioned on the earlier tokens of its window (earlier documents included), and
   the first token of a window only on START.
4. **Bits per byte** = Σ next-token NLL in nats over the document tokens ÷
   (ln 2 × Σ UTF-8 bytes of the documents). The slice is identified by the sha256 of
   the documents joined with ``"\\n\\n"`` — exactly the bytes scored plus separators.

Log-probabilities come from the final hidden states a chunk of positions at a time,
so full-vocabulary logits (262k entries per position for Gemma 3) never exist for a
whole batch. The log-softmax is always taken in float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from layra.arch import describe, unwrap
from layra.errors import LayraError, require

# Float32 logits for at most this many (position, vocab) entries exist at once: 64 MiB.
LOGIT_BUDGET = 1 << 24
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class TextSlice:
    """The documents of one language that get scored, and their identity."""

    lang: str
    path: str
    docs: tuple[str, ...]
    sha256: str
    n_bytes: int
    truncated: bool  # max_bytes left documents out


@dataclass(frozen=True)
class BpbResult:
    """One language's bits per byte and everything needed to check or reproduce it."""

    lang: str
    bpb: float
    nll_nats: float
    n_bytes: int
    n_tokens: int  # document tokens scored (separators and START excluded)
    n_docs: int
    n_windows: int
    tokens_per_byte: float
    data_sha256: str
    seq_len: int
    roundtrip_mismatches: int  # documents whose tokens do not decode back to the text
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def split_documents(text: str) -> list[str]:
    """Blank-line separated paragraphs of ``text``, stripped, empty ones dropped."""
    text = text.replace("\r\n", "\n")
    return [d.strip() for d in _BLANK_LINES.split(text) if d.strip()]


def select_documents(docs: list[str], max_bytes: int | None) -> tuple[list[str], bool]:
    """The leading documents that fit in ``max_bytes`` (UTF-8), and whether any were cut."""
    if max_bytes is None:
        return list(docs), False
    require(max_bytes > 0, f"--max-bytes must be positive, got {max_bytes}")
    out: list[str] = []
    total = 0
    for d in docs:
        size = len(d.encode("utf-8"))
        if total + size > max_bytes:
            if not out:  # one huge first document: keep its head, whole characters only
                head = d.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore").strip()
                if head:
                    out.append(head)
            return out, True
        out.append(d)
        total += size
    return out, False


def slice_hash(docs: list[str] | tuple[str, ...]) -> str:
    """sha256 of the documents joined with a blank line, as UTF-8."""
    return hashlib.sha256("\n\n".join(docs).encode("utf-8")).hexdigest()


def load_text(lang: str, path: str | Path, max_bytes: int | None = None) -> TextSlice:
    """Read a held-out file into the :class:`TextSlice` that will be scored.

    Raises :class:`LayraError` for a missing, unreadable, non-UTF-8 or empty file.
    """
    p = Path(path)
    require(p.is_file(), f"text file for {lang} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LayraError(f"text file {p} is not UTF-8 ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise LayraError(f"cannot read text file {p}: {e.strerror}") from e
    docs, truncated = select_documents(split_documents(text), max_bytes)
    require(bool(docs), f"text file {p} ({lang}) has no text")
    return TextSlice(
        lang=lang,
        path=str(p),
        docs=tuple(docs),
        sha256=slice_hash(docs),
        n_bytes=sum(len(d.encode("utf-8")) for d in docs),
        truncated=truncated,
    )


def pack_windows(
    doc_ids: list[list[int]], seq_len: int, start_id: int, sep_id: int
) -> list[tuple[list[int], list[bool]]]:
    """Windows ``(input_ids, scored)`` over the documents' token stream (module docstring, 2–3).

    ``scored[j]`` says whether ``input_ids[j]`` is a document token to predict from
    ``input_ids[:j]``; the START token and the separators are never scored.
    """
    require(seq_len >= 2, f"--seq-len must be at least 2, got {seq_len}")
    stream: list[int] = []
    scored: list[bool] = []
    for i, ids in enumerate(doc_ids):
        if i:
            stream.append(sep_id)
            scored.append(False)
        stream.extend(ids)
        scored.extend([True] * len(ids))
    step = seq_len - 1
    return [
        ([start_id, *stream[i : i + step]], [False, *scored[i : i + step]])
        for i in range(0, len(stream), step)
    ]


def _special_ids(tok) -> tuple[int, int, int]:
    """(start, separator, pad) token ids; BOS starts windows, EOS separates documents."""
    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    require(eos is not None, "the tokenizer has no EOS token; cannot separate documents")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return bos, eos, pad


def tokenize_documents(tok, docs: tuple[str, ...] | list[str]) -> tuple[list[list[int]], int]:
    """Token ids per document (no special tokens), and how many do not decode back exactly."""
    ids = tok(list(docs), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    mismatches = sum(tok.decode(t) != d for t, d in zip(ids, docs, strict=True))
    return [list(t) for t in ids], mismatches


def _autocast(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def window_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[float, int]:
    """Σ NLL (nats, float64) of the scored tokens of a padded batch, and their count.

    ``scored[b, j]`` marks ``input_ids[b, j]`` as a target predicted from position
    ``j - 1``. The decoder runs once; the LM head and log-softmax run on chunks of
    scored positions so at most :data:`LOGIT_BUDGET` float32 logits exist at a time.
    """
    hf = unwrap(model)
    arch = describe(hf)
    head = hf.get_output_embeddings()
    decoder = hf.get_decoder()
    with torch.inference_mode(), _autocast(compute_dtype, input_ids.device):
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        # Position j-1 predicts token j.
        target_mask = scored[:, 1:]
        h = hidden[:, :-1][target_mask]
        targets = input_ids[:, 1:][target_mask]
        vocab = head.weight.shape[0]
        chunk = max(1, LOGIT_BUDGET // vocab)
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, h.shape[0], chunk):
            logits = head(h[i : i + chunk]).float()
            if arch.logit_softcap:
                logits = torch.tanh(logits / arch.logit_softcap) * arch.logit_softcap
            picked = logits.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
            total += (torch.logsumexp(logits, dim=-1) - picked).double().sum().cpu()
    return float(total), int(targets.numel())


def bits_per_byte(
    model: nn.Module,
    tok,
    text: TextSlice,
    seq_len: int = 512,
    batch_size: int = 8,
    compute_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> BpbResult:
    """Bits per byte of ``model`` on ``text`` as defined in the module docstring.

    Deterministic: windows and batches are fixed by the text and the arguments; the
    result does not depend on ``batch_size`` beyond float rounding.
    """
    require(batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}")
    max_pos = getattr(getattr(unwrap(model).config, "text_config", None) or unwrap(model).config,
                      "max_position_embeddings", None)  # fmt: skip
    require(
        max_pos is None or seq_len <= max_pos,
        f"--seq-len {seq_len} exceeds the model's maximum of {max_pos} positions",
    )
    t0 = time.perf_counter()
    start_id, sep_id, pad_id = _special_ids(tok)
    doc_ids, mismatches = tokenize_documents(tok, text.docs)
    windows = pack_windows(doc_ids, seq_len, start_id, sep_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    batches = range(0, len(windows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"bpb {text.lang}", unit="batch", leave=False)
    try:
        for b in batches:
            group = windows[b : b + batch_size]
            width = max(len(ids) for ids, _ in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            att = torch.zeros((len(group), width), dtype=torch.long)
            sc = torch.zeros((len(group), width), dtype=torch.bool)
            for r, (w_ids, w_sc) in enumerate(group):
                ids[r, : len(w_ids)] = torch.tensor(w_ids)
                att[r, : len(w_ids)] = 1
                sc[r, : len(w_sc)] = torch.tensor(w_sc)
            nll, n = window_nll(model, ids.to(device), att.to(device), sc.to(device), compute_dtype)
            total_nll += nll
            total_tokens += n
    finally:
        model.train(was_training)
    n_tokens = sum(len(d) for d in doc_ids)
    assert total_tokens == n_tokens, (total_tokens, n_tokens)  # every token scored once
    return BpbResult(
        lang=text.lang,
        bpb=total_nll / (math.log(2) * text.n_bytes),
        nll_nats=total_nll,
        n_bytes=text.n_bytes,
        n_tokens=n_tokens,
        n_docs=len(text.docs),
        n_windows=len(windows),
        tokens_per_byte=n_tokens / text.n_bytes,
        data_sha256=text.sha256,
        seq_len=seq_len,
        roundtrip_mismatches=mismatches,
        seconds=time.perf_counter() - t0,
    )

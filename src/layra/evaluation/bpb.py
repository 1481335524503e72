"""Bits per byte of a causal LM on held-out text, comparable across tokenizers.

    layra eval bpb MODEL --text glg=heldout/gl.txt --text eng=heldout/en.txt

What is measured, exactly (:func:`bits_per_byte`; docs/evaluation.md):

1. **Documents.** :func:`layra.documents.read_leading_documents`: a ``.txt`` file's documents
   are its blank-line separated blocks (the format of a corpus' ``heldout.txt``), a
   ``.jsonl`` file's are its rows' ``text`` (a run's ``heldout/LANG.jsonl``); stripped,
   empty ones dropped. With ``max_bytes`` the first documents whose UTF-8 sizes add up
   to at most ``max_bytes`` are kept (the first document alone, cut at a character
   boundary, if it is larger).
2. **Tokens.** Each document is tokenised on its own, without special tokens (text
   that looks like ``<eos>`` stays text).
3. **Windows: each document on its own.** Every window is ``[START] + tokens of one
   document``, START = BOS (EOS if the tokenizer has no BOS), at most ``seq_len``
   tokens. A document of up to ``seq_len - 1`` tokens is one window. A longer one is
   scored in strided windows (:func:`document_windows`): the first holds its first
   ``W = seq_len - 1`` tokens and scores them all; each next one ends ``S = W // 2``
   tokens further (the last one ends at the document's end), holds the ``W`` tokens
   before that end and scores only the tokens not scored yet. So every token is
   scored exactly once, from START and at least ``W - S`` earlier tokens of its own
   document (all of them in the first window), and nothing is ever conditioned on
   or scored across a document boundary: no model is charged or credited for a
   packing convention.
4. **Bits per byte** = Σ next-token NLL in nats over the document tokens ÷
   (ln 2 × Σ UTF-8 bytes of the documents). The slice is identified by the sha256 of
   the documents joined with ``"\\n\\n"``. The per-document NLL and bytes are kept
   (:attr:`BpbResult.doc_nll`), so reports can resample documents.

Log-probabilities come from the final hidden states a chunk of positions at a time,
so full-vocabulary logits (262k entries per position for Gemma 3) never exist for a
whole batch. The log-softmax is always taken in float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from layra.arch import describe, unwrap
from layra.documents import read_leading_documents
from layra.errors import LayraError, require

# Float32 logits for at most this many (position, vocab) entries exist at once: 64 MiB.
LOGIT_BUDGET = 1 << 24
# Names the definition above; part of every record's settings, so a store never serves
# (and a report never compares) numbers scored another way, e.g. layra's earlier packing.
SCORING = "per-document/1"


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
    n_tokens: int  # document tokens scored (START excluded)
    n_docs: int
    n_windows: int
    tokens_per_byte: float
    data_sha256: str
    seq_len: int
    stride: int  # S of the module docstring, step 3
    scoring: str
    roundtrip_mismatches: int  # documents whose tokens do not decode back to the text
    seconds: float
    doc_nll: list[float] = field(default_factory=list)  # Σ NLL (nats) of each document
    doc_bytes: list[int] = field(default_factory=list)  # UTF-8 bytes of each document

    def to_dict(self) -> dict:
        return asdict(self)


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

    Raises :class:`LayraError` for a missing, unreadable, non-UTF-8, binary or empty
    file, and a directory; reads no further than ``max_bytes`` need
    (:func:`layra.documents.read_leading_documents`).
    """
    p = Path(path)
    require(max_bytes is None or max_bytes > 0, f"--max-bytes must be positive, got {max_bytes}")
    require(not p.is_dir(), f"text file for {lang}: {p} is a directory, not a text file")
    require(p.is_file(), f"text file for {lang} not found: {p}")
    try:
        # Stops reading once max_bytes are decided: the same documents select_documents
        # keeps from the whole file, without reading it whole.
        docs, truncated = read_leading_documents(p, max_bytes)
    except LayraError as e:
        raise LayraError(f"text file for {lang}: {e}") from e
    require(bool(docs), f"text file {p} ({lang}) has no text")
    return TextSlice(
        lang=lang,
        path=str(p),
        docs=tuple(docs),
        sha256=slice_hash(docs),
        n_bytes=sum(len(d.encode("utf-8")) for d in docs),
        truncated=truncated,
    )


def stride_for(seq_len: int) -> int:
    """S: how far each next window of a long document moves (module docstring, step 3)."""
    return max(1, (seq_len - 1) // 2)


def document_windows(ids: list[int], seq_len: int, start_id: int) -> list[tuple[list[int], int]]:
    """One document's windows ``(input_ids, n_scored)``; the last ``n_scored`` are scored.

    ``input_ids`` is START plus at most ``seq_len - 1`` of the document's tokens; the
    windows together score each token exactly once (module docstring, step 3).
    """
    require(seq_len >= 2, f"--seq-len must be at least 2, got {seq_len}")
    width, stride = seq_len - 1, stride_for(seq_len)
    if not ids:
        return []
    done = min(width, len(ids))
    out = [([start_id, *ids[:done]], done)]
    while done < len(ids):
        end = min(len(ids), done + stride)
        out.append(([start_id, *ids[end - width : end]], end - done))
        done = end
    return out


def start_id(tok) -> int:
    """The token every window starts with: BOS, or EOS if the tokenizer has no BOS."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    require(bos is not None, "the tokenizer has neither BOS nor EOS; cannot start a window")
    return bos


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
) -> torch.Tensor:
    """Σ NLL (nats, float64, on the CPU) of each row's scored tokens in a padded batch.

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
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        rows = rows.expand_as(target_mask)[target_mask].cpu()
        vocab = head.weight.shape[0]
        chunk = max(1, LOGIT_BUDGET // vocab)
        per_row = torch.zeros(input_ids.shape[0], dtype=torch.float64)
        for i in range(0, h.shape[0], chunk):
            logits = head(h[i : i + chunk]).float()
            if arch.logit_softcap:
                logits = torch.tanh(logits / arch.logit_softcap) * arch.logit_softcap
            picked = logits.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
            nll = (torch.logsumexp(logits, dim=-1) - picked).double().cpu()
            per_row.index_add_(0, rows[i : i + chunk], nll)
    return per_row


def _check_sizes(model: nn.Module, seq_len: int, batch_size: int) -> None:
    require(batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}")
    config = unwrap(model).config
    max_pos = getattr(
        getattr(config, "text_config", None) or config, "max_position_embeddings", None
    )
    require(
        max_pos is None or seq_len <= max_pos,
        f"--seq-len {seq_len} exceeds the model's maximum of {max_pos} positions",
    )


def _all_windows(doc_ids: list[list[int]], seq_len: int, start: int):
    """Every document's windows as ``(doc, ids, n scored)``, longest first (batches pad little)."""
    windows = [
        (d, ids, n)
        for d, doc in enumerate(doc_ids)
        for ids, n in document_windows(doc, seq_len, start)
    ]
    windows.sort(key=lambda w: -len(w[1]))  # stable: ties keep document order
    return windows


def _bar(batches, lang: str, show: bool):
    if not show:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"bpb {lang}", unit="batch", leave=False)


def _batch(group, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows ``(doc, ids, n scored)`` padded on the right: (ids, attention mask, scored mask);
    a window's last ``n`` tokens are the ones it scores."""
    width = len(group[0][1])
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(group), width), dtype=torch.long)
    sc = torch.zeros((len(group), width), dtype=torch.bool)
    for r, (_, w_ids, n) in enumerate(group):
        ids[r, : len(w_ids)] = torch.tensor(w_ids)
        att[r, : len(w_ids)] = 1
        sc[r, len(w_ids) - n : len(w_ids)] = True
    return ids, att, sc


def bits_per_byte(
    model: nn.Module,
    tok,
    text: TextSlice,
    seq_len: int = 512,
    batch_size: int = 8,
    compute_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> BpbResult:
    """Bits per byte of ``model`` on ``text``, each document scored on its own (module doc).

    Windows of all documents are batched (padded on the right, with an attention
    mask; a window never holds two documents), longest first so batches pad little.
    Deterministic; the result does not depend on ``batch_size`` or on the other
    documents beyond float rounding.
    """
    _check_sizes(model, seq_len, batch_size)
    t0 = time.perf_counter()
    start = start_id(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else start
    doc_ids, mismatches = tokenize_documents(tok, text.docs)
    windows = _all_windows(doc_ids, seq_len, start)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    doc_nll = torch.zeros(len(doc_ids), dtype=torch.float64)
    batches = _bar(range(0, len(windows), batch_size), text.lang, progress)
    try:
        for b in batches:
            group = windows[b : b + batch_size]
            ids, att, sc = (x.to(device) for x in _batch(group, pad_id))
            nll = window_nll(model, ids, att, sc, compute_dtype)
            doc_nll.index_add_(0, torch.tensor([d for d, _, _ in group]), nll)
    finally:
        model.train(was_training)
    n_tokens = sum(len(d) for d in doc_ids)
    # The windowing promises every token scored exactly once; a bpb without that is wrong.
    require(
        sum(n for _, _, n in windows) == n_tokens, "internal: windows do not score every token once"
    )
    total_nll = float(doc_nll.sum())
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
        stride=stride_for(seq_len),
        scoring=SCORING,
        roundtrip_mismatches=mismatches,
        seconds=time.perf_counter() - t0,
        doc_nll=doc_nll.tolist(),
        doc_bytes=[len(d.encode("utf-8")) for d in text.docs],
    )

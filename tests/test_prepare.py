"""Prepared data (layra.prepare): the same blocks as the in-memory definition, kill-safe,
verified, shared between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference_data
import tiny
import torch

import layra
from layra.config import DataConfig, SourceConfig
from layra.errors import LayraError
from layra.prepare import open_prepared, prepare

TESTS = Path(__file__).parent
SRC = Path(layra.__file__).parents[1]

WORDS = (
    "abra menú ficheiro escolla gardar documento aberto actual texto folla cela táboa marco "
    "estilo páxina liña columna fonte cor borde imaxe gráfico nota"
).split()


def _docs(n: int, seed: int, prefix: str = "") -> list[str]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 40))
        out.append(f"{prefix}{i} " + " ".join(words) + ".")
    # Near-duplicates of earlier documents, so held-out ones get dropped.
    out += [d.upper() + " extra" for d in out[: n // 10]]
    return out


def _write_txt(path: Path, docs: list[str]) -> Path:
    # Blank lines of several kinds, \r\n included, separate the documents.
    seps = ["\n\n", "\n \n", "\r\n\r\n", "\n\n\n", "\n\t\n"]
    path.write_text("".join(d + seps[i % len(seps)] for i, d in enumerate(docs)), "utf-8")
    return path


def bos_tokenizer():
    """The tiny tokenizer, adding BOS to every document (as Gemma's and Llama's do)."""
    from tokenizers import processors

    tok = tiny.make_tokenizer()
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert tok("a b")["input_ids"][0] == bos
    return tok


def _same(new, cfg, tok, seed, counts: bool = True):
    data, block_lang, heldout, stats = reference_data.build_dataset(cfg, tok, seed=seed)
    assert torch.equal(new.blocks[:], data)
    assert new.block_lang == block_lang
    assert new.heldout == heldout
    if not counts:
        return
    got = {
        k: (v["train_documents"], v["heldout_near_duplicates"])
        for k, v in new.stats["languages"].items()
    }
    assert got == stats  # {lang: (documents used, held-out near-duplicates dropped)}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    gl = _write_txt(root / "gl.txt", _docs(300, 0, "gl "))
    pt = _write_txt(root / "pt.txt", _docs(120, 1, "pt "))
    jl = root / "es.jsonl"
    jl.write_text(
        "".join(json.dumps({"text": d + "\r\n\r\nsegundo parágrafo"}) + "\n" for d in _docs(80, 2))
    )
    return {"gl": gl, "pt": pt, "es": jl}


CASES = {
    "budget": dict(langs=["gl"], max_tokens=900, heldout_fraction=0.1),
    "all": dict(langs=["gl"], heldout_fraction=0.2),
    "equal-no-budget": dict(langs=["gl", "pt"], heldout_fraction=0.1),
    "weights": dict(langs=["gl", "pt"], max_tokens=700, mix="weights", heldout_fraction=0.1),
    "concat": dict(langs=["gl", "pt"], max_tokens=1500, mix="concat", heldout_fraction=0.05),
    "jsonl-and-txt": dict(langs=["gl", "es"], max_tokens=800, heldout_fraction=0.2),
    "no-shuffle": dict(langs=["pt"], shuffle=False, heldout_fraction=0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepared_blocks_equal_the_in_memory_definition(case, texts, tmp_path):
    c = dict(CASES[case])
    langs = c.pop("langs")
    weights = {"gl": 1.0, "pt": 3.0, "es": 2.0}
    srcs = [SourceConfig(path=str(texts[x]), lang=x, weight=weights[x]) for x in langs]
    cfg = DataConfig(sources=srcs, seq_len=16, cache_dir=str(tmp_path), **c)
    tok = bos_tokenizer()
    for seed in (0, 5):
        _same(prepare(cfg, tok, seed=seed, say=lambda m: None), cfg, tok, seed)


def test_only_the_candidates_the_kept_heldout_needs_are_checked(texts, tmp_path, monkeypatch):
    import layra.prepare_passes as P

    # Two candidates checked at first, then more, two at a time, until 3 are kept: the kept
    # documents are those of the full check (the count of dropped ones covers those checked).
    monkeypatch.setattr(P, "checked_candidates", lambda missing: 2)
    src = _write_txt(tmp_path / "dups.txt", _docs(200, 7) + [d + "!" for d in _docs(200, 7)])
    cfg = DataConfig(
        sources=[SourceConfig(path=str(src), lang="glg")],
        seq_len=16,
        heldout_fraction=0.3,
        heldout_max_docs=3,
        cache_dir=str(tmp_path / "cache"),
    )
    tok = bos_tokenizer()
    data = prepare(cfg, tok, seed=0, say=lambda m: None)
    st = data.stats["languages"]["glg"]
    assert len(data.heldout["glg"]) == 3 and st["heldout_near_duplicates"] > 0
    assert st["heldout_candidates_checked"] < 0.3 * 400 / 2  # far fewer than all
    _same(data, cfg, tok, 0, counts=False)


def test_worker_processes_give_the_same_blocks(texts, tmp_path, monkeypatch):
    import layra.prepare
    import layra.prepare_passes

    monkeypatch.setattr(layra.prepare, "INLINE_BYTES", 0)  # tiny text, but through the pool
    monkeypatch.setattr(layra.prepare_passes, "BATCH_BYTES", 512)  # many tasks in flight
    srcs = [SourceConfig(path=str(texts[x]), lang=x) for x in ("gl", "es")]
    cfg = DataConfig(sources=srcs, seq_len=16, max_tokens=1200, heldout_fraction=0.1)
    cfg.cache_dir = str(tmp_path)
    tok = bos_tokenizer()
    said = []
    data = prepare(cfg, tok, seed=3, workers=2, say=said.append)
    assert "on 2 workers" in said[-1]
    _same(data, cfg, tok, 3)


def test_hub_source_streams_the_same_training_blocks(tmp_path):
    docs = _docs(120, 4)
    hub = tmp_path / "hubish"
    hub.mkdir()
    pq.write_table(pa.table({"text": docs[:60]}), hub / "train-0.parquet")
    pq.write_table(pa.table({"text": docs[60:]}), hub / "train-1.parquet")
    tok = bos_tokenizer()
    for frac in (0.0, 0.2):
        src = SourceConfig(path=str(hub), lang="glg", format="hf")
        cfg = DataConfig(sources=[src], seq_len=16, max_tokens=600, heldout_fraction=frac)
        cfg.cache_dir = str(tmp_path / "cache")
        new = prepare(cfg, tok, seed=1, say=lambda m: None)
        data, _, heldout, _ = reference_data.build_dataset(cfg, tok, seed=1)
        assert torch.equal(new.blocks[:], data)
        # Held-out hub documents: those streamed before the last tokenized training
        # document (the in-memory reader kept a whole 256-document batch's worth more).
        assert heldout["glg"][: len(new.heldout["glg"])] == new.heldout["glg"]


def test_reuse_and_a_changed_source_prepares_again(texts, tmp_path):
    tok = tiny.make_tokenizer()
    src = tmp_path / "gl.txt"
    src.write_bytes(texts["gl"].read_bytes())
    cfg = DataConfig(sources=[SourceConfig(path=str(src), lang="glg")], seq_len=16)
    cfg.cache_dir = str(tmp_path / "cache")
    said = []
    a = prepare(cfg, tok, say=said.append)
    b = prepare(cfg, tok, say=said.append)
    assert a.root == b.root and "reusing prepared data" in said[-1]
    c = prepare(cfg, tok, seed=1, say=said.append)  # another sample: another dataset
    assert c.root != a.root
    with src.open("a") as f:
        f.write("\n\nun documento novo e máis longo que os outros para cambiar os bloques\n")
    d = prepare(cfg, tok, say=said.append)
    assert d.root != a.root and d.fingerprint != a.fingerprint


def test_damaged_tokens_and_foreign_ids_are_refused(texts, tmp_path):
    tok = tiny.make_tokenizer()
    cfg = DataConfig(sources=[SourceConfig(path=str(texts["gl"]), lang="glg")], seq_len=16)
    cfg.cache_dir = str(tmp_path)
    data = prepare(cfg, tok, say=lambda m: None)
    with pytest.raises(LayraError, match="outside the tokenizer's 100 entries"):
        open_prepared(data.root, vocab_size=100)
    f = data.root / "glg.tokens"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 1  # one id changed, sizes and headers intact
    f.write_bytes(bytes(raw))
    with pytest.raises(LayraError, match="shard 0 does not match its checksum"):
        open_prepared(data.root, vocab_size=len(tok))
    with pytest.raises(LayraError, match="does not match its checksum"):
        prepare(cfg, tok, say=lambda m: None)  # a reuse verifies too


def test_text_that_is_not_text_is_refused_in_one_line(tmp_path):
    tok = tiny.make_tokenizer()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ola mundo\n\n\x00\x01binario")
    cfg = DataConfig(sources=[SourceConfig(path=str(bad), lang="glg")], seq_len=8)
    cfg.cache_dir = str(tmp_path / "cache")
    with pytest.raises(LayraError, match="not a text file"):
        prepare(cfg, tok, say=lambda m: None)
    bad.write_bytes(b"ola mundo\n\n\xff\xfe latin-1?\n")
    with pytest.raises(LayraError, match="not valid UTF-8 \\(byte 11\\)"):
        prepare(cfg, tok, say=lambda m: None)


# A child that prepares with tiny shards and dies abruptly (os._exit, as kill -9) at
# write number N inside layra.prepare._build: every os.replace (atomic writes, the
# progress commits) and every TokenWriter.commit counts.
KILLER = textwrap.dedent(
    """
    import os, sys, json
    sys.path[:0] = [{tests!r}, {src!r}]
    import tiny, test_prepare
    import layra.prepare as P, layra.prepare_passes as passes
    from layra.config import DataConfig, SourceConfig
    n, text, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    passes.SHARD_TOKENS, passes.BATCH_DOCS = 200, 16
    calls, real_replace = [0], os.replace

    def replace(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os._exit(137)
        return real_replace(*a, **k)

    os.replace = replace
    cfg = DataConfig(sources=[SourceConfig(path=text, lang="glg")], seq_len=16,
                     heldout_fraction=0.2, cache_dir=cache)
    data = P.prepare(cfg, test_prepare.bos_tokenizer(), seed=2, say=lambda m: None)
    print(json.dumps({{"calls": calls[0], "root": str(data.root)}}))
    """
)


def _child(tmp_path: Path, n: int, text: Path, cache: Path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tests=str(TESTS), src=str(SRC)))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, str(script), str(n), str(text), str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_kill_at_any_write_resumes_to_the_same_data(texts, tmp_path):
    import layra.prepare_passes as P

    tok = bos_tokenizer()
    cfg = DataConfig(
        sources=[SourceConfig(path=str(texts["gl"]), lang="glg")], seq_len=16, heldout_fraction=0.2
    )
    cfg.cache_dir = str(tmp_path / "ref")
    want = prepare(cfg, tok, seed=2, say=lambda m: None)
    full = _child(tmp_path, 0, texts["gl"], tmp_path / "count")
    assert full.returncode == 0, full.stderr[-2000:]
    writes = json.loads(full.stdout.splitlines()[-1])["calls"]
    assert writes >= 8  # index, several shard commits, blocks, stats, marker
    for n in sorted({1, 2, 3, writes // 2, writes - 2, writes - 1, writes}):
        cache = tmp_path / f"kill-{n}"
        r = _child(tmp_path, n, texts["gl"], cache)
        assert r.returncode == 137, (n, r.stdout, r.stderr[-2000:])
        key = next(p for p in cache.iterdir() if p.is_dir())
        committed = []
        if (key / "glg.progress.json").exists():
            committed = json.loads((key / "glg.progress.json").read_text())["shards"]
        cfg.cache_dir = str(cache)
        said = []
        P.SHARD_TOKENS, P.BATCH_DOCS = 200, 16
        try:
            got = prepare(cfg, tok, seed=2, say=said.append)
        finally:
            P.SHARD_TOKENS, P.BATCH_DOCS = 1 << 24, 4096
        assert torch.equal(got.blocks[:], want.blocks[:]), n
        assert got.heldout == want.heldout and got.fingerprint == want.fingerprint, n
        # Shards committed before the kill were kept, not tokenized again.
        now = json.loads((key / "glg.progress.json").read_text())["shards"]
        assert now[: len(committed)] == committed, n
        assert not [p for p in key.rglob(".*") if ".tmp" in p.name], n


def test_two_processes_prepare_once_and_share(texts, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, json
        sys.path[:0] = [{str(TESTS)!r}, {str(SRC)!r}]
        import test_prepare
        from layra.config import DataConfig, SourceConfig
        from layra.prepare import prepare
        cfg = DataConfig(sources=[SourceConfig(path={str(texts["gl"])!r}, lang="glg")],
                         seq_len=16, cache_dir={str(tmp_path)!r})
        said = []
        d = prepare(cfg, test_prepare.bos_tokenizer(), say=said.append)
        print(json.dumps({{"root": str(d.root), "fp": d.fingerprint, "said": said}}))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["root"] == outs[1]["root"] and outs[0]["fp"] == outs[1]["fp"]
    built = [o for o in outs if any("prepared" in s and "tokens in" in s for s in o["said"])]
    assert len(built) == 1  # the other one waited for it, then reused it


def test_a_run_packed_by_an_older_layra_is_refused_on_resume(
    model_dirs, corpus_dir, tmp_path, capsys
):
    from layra.cli import main

    out = tmp_path / "old"
    out.mkdir()
    (out / "data.safetensors").write_bytes(b"x")
    (out / "config.yaml").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{name_or_path: {model_dirs['llama']}}}\nmethod: {{name: lora}}\n"
        f"data: {{sources: [{{path: {corpus_dir / 'gl.txt'}, lang: glg}}], seq_len: 16}}\n"
        f"output_dir: {out}\n"
    )
    rc = main(["train", "--config", str(cfg), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "packed by an earlier layra" in err, err

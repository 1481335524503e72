"""Tokenizer diagnostics: exact fertility figures on a tokenizer and text built here."""

import json

import pytest

from layra.cli import main
from layra.diagnose import TextStats, diagnose_tokenizer, judge, markdown_table, text_stats
from layra.errors import LayraError


def word_tokenizer(byte_fallback: bool):
    """BPE over whitespace-split words: a, b, c, the merge ab, and (optionally) the 256 bytes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4}
    if byte_fallback:
        vocab.update({f"<0x{i:02X}>": 5 + i for i in range(256)})
    tk = Tokenizer(
        models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>", byte_fallback=byte_fallback)
    )
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


TEXTS = {"eng": "ab c", "xx": "ab ab c é"}


def test_fertility_exact_with_byte_fallback():
    tok = word_tokenizer(byte_fallback=True)
    # "ab ab c é" -> ab, ab, c, <0xC3>, <0xA9>: 4 words, 9 chars, 10 bytes, 5 tokens.
    s = text_stats(tok, TEXTS["xx"])
    assert s == TextStats(chars=9, bytes=10, words=4, tokens=5, byte_tokens=2, unk_tokens=0)
    assert (s.tokens_per_word, s.chars_per_token, s.bytes_per_token) == (1.25, 1.8, 2.0)
    assert (s.byte_share, s.unk_share) == (0.4, 0.0)
    report = diagnose_tokenizer(tok, TEXTS)
    xx = report["languages"]["xx"]
    # English: "ab c" -> 2 tokens for 2 words, 4 chars, 4 bytes.
    assert xx["vs_reference"] == {
        "tokens_per_word": 1.25,
        "chars_per_token": 0.9,
        "bytes_per_token": 1.0,
    }
    assert xx["flagged"] and xx["reasons"] == ["40.0% byte-piece/unknown tokens (>= 5%)"]
    assert not report["languages"]["eng"]["flagged"]


def test_unknown_tokens_without_byte_fallback():
    s = text_stats(word_tokenizer(byte_fallback=False), TEXTS["xx"])
    assert s == TextStats(chars=9, bytes=10, words=4, tokens=4, byte_tokens=0, unk_tokens=1)
    assert s.unk_share == 0.25


def test_byte_level_bpe_partial_characters(tok):
    # The test tokenizer never saw Arabic script: each UTF-8 byte of "ہر" is its own token,
    # none a whole character.
    s = text_stats(tok, "ہر")
    assert (s.chars, s.bytes, s.tokens, s.byte_tokens) == (2, 4, 4, 4)
    assert (s.chars_per_token, s.bytes_per_token, s.byte_share) == (0.5, 1.0, 1.0)
    latin = text_stats(tok, "educación")
    assert latin.byte_tokens == 0


def test_flag_thresholds_exact():
    ref = TextStats(
        chars=100, bytes=100, words=20, tokens=20, byte_tokens=0, unk_tokens=0
    )  # 5 chars/token
    stats = {
        "eng": ref,
        "below": TextStats(
            chars=48, bytes=96, words=10, tokens=20, byte_tokens=0, unk_tokens=0
        ),  # 2.4
        "at": TextStats(
            chars=50, bytes=100, words=10, tokens=20, byte_tokens=0, unk_tokens=0
        ),  # 2.5
        "bytes": TextStats(
            chars=100, bytes=100, words=20, tokens=20, byte_tokens=0, unk_tokens=1
        ),  # 5%
        "swahili-like": TextStats(
            chars=100, bytes=100, words=10, tokens=25, byte_tokens=0, unk_tokens=0
        ),
    }
    langs = judge(stats, "eng")["languages"]
    assert {k: v["flagged"] for k, v in langs.items()} == {
        "eng": False,
        "below": True,
        "at": False,
        "bytes": True,
        "swahili-like": False,
    }
    assert langs["below"]["reasons"] == ["2.40 chars/token is 0.48× eng's (< 0.5)"]
    # Long words alone (2.5 tokens/word, 2.5× English) are not fragmentation.
    assert langs["swahili-like"]["vs_reference"]["tokens_per_word"] == 2.5
    assert judge(stats, "eng", min_char_ratio=0.4)["languages"]["below"]["flagged"] is False
    with pytest.raises(LayraError, match="reference language 'spa'"):
        judge(stats, "spa")


def test_markdown_table_exact():
    report = diagnose_tokenizer(word_tokenizer(byte_fallback=True), TEXTS)
    lines = markdown_table(report).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| eng | 2 | 2 | 1.00 | 2.00 | 2.00 | 0.0 | 0.0 | 1.00× | 1.00× | no |"
    assert lines[3] == (
        "| xx | 4 | 5 | 1.25 | 1.80 | 2.00 | 40.0 | 0.0 | 1.25× | 0.90× "
        "| **yes**: 40.0% byte-piece/unknown tokens (>= 5%) |"
    )


def save_tokenizer(path):
    """A model directory as layra expects one (config.json + tokenizer); no weights needed."""
    from transformers import LlamaConfig

    word_tokenizer(byte_fallback=True).save_pretrained(path)
    LlamaConfig(vocab_size=261).save_pretrained(path)
    return path


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    model = save_tokenizer(tmp_path / "tok")
    for lang, text in TEXTS.items():
        (tmp_path / f"{lang}.txt").write_text(text, encoding="utf-8")
    out, md = tmp_path / "diag.json", tmp_path / "diag.md"
    argv = [
        "diagnose",
        "tokenizer",
        str(model),
        "--text",
        f"eng={tmp_path / 'eng.txt'}",
        "--text",
        f"xx={tmp_path / 'xx.txt'}",
        "--out",
        str(out),
        "--markdown",
        str(md),
    ]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert md.read_text() in stdout and "fragmented by this tokenizer: xx" in stdout
    record = json.loads(out.read_text())
    assert record["format"] == "layra-tokenizer-diagnosis" and record["reference"] == "eng"
    assert record["languages"]["xx"]["tokens"] == 5 and record["languages"]["xx"]["flagged"]
    assert len(record["texts"]["xx"]["sha256"]) == 64 and "versions" in record["provenance"]
    assert main(argv) == 2  # outputs exist
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "xx=XX"], "reference language 'eng' is not among the texts (xx)"),
        (["--text", "eng=EN", "--reference", "spa"], "reference language 'spa'"),
        (["--text", "eng=EN", "--text", "xx=nothing.txt"], "does not exist"),
        (["--text", "eng=EN", "--min-char-ratio", "2"], "--min-char-ratio"),
        ([], "give at least one --text"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    model = save_tokenizer(tmp_path / "tok")
    for lang, text in TEXTS.items():
        (tmp_path / f"{lang}.txt").write_text(text, encoding="utf-8")
    extra = [
        e.replace("EN", str(tmp_path / "eng.txt")).replace("XX", str(tmp_path / "xx.txt"))
        for e in extra
    ]
    assert main(["diagnose", "tokenizer", str(model), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layra: error:") and message in err and err.count("\n") == 1


def test_cli_missing_model_is_one_line(tmp_path, capsys):
    (tmp_path / "eng.txt").write_text("ab c")
    assert (
        main(
            [
                "diagnose",
                "tokenizer",
                str(tmp_path / "nope"),
                "--text",
                f"eng={tmp_path / 'eng.txt'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("layra: error:") and err.count("\n") == 1

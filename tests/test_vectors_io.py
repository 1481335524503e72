"""The pieces under ``layra vector``: streamed safetensors I/O, fingerprints from files,
pure arithmetic, protected rows, diff, and the cross-check against mergekit."""

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from test_vectors_fixtures import tensors

from layra.errors import LayraError
from layra.fingerprint import model_fingerprint
from layra.models import load_model
from layra.vectors import apply_to_dir, diff_models, load_vector, parse_spec
from layra.vectors.apply import parse_size
from layra.vectors.arithmetic import concat_lowrank, lowrank_rows, weighted_sum, zero_rows
from layra.vectors.protect import resolve_rows, special_token_ids
from layra.vectors.shards import StreamWriter, read_elements, read_header, read_rows
from layra.vectors.source import LiveModel, ModelDir


def test_stream_writer_output_is_plain_safetensors(tmp_path):
    src = {"raw": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)}
    save_file(src, tmp_path / "src.safetensors")
    raw = read_header(tmp_path / "src.safetensors")[0]["raw"]
    a = torch.randn(10, 3)
    planned = [
        ("a", torch.float32, (10, 3)),
        ("gone", torch.float32, (5,)),
        ("raw", torch.bfloat16, (3, 4)),
        ("s", torch.float32, ()),
    ]
    with StreamWriter(tmp_path / "out.safetensors", planned, {"format": "pt"}) as w:
        w.begin("a", torch.float32, (10, 3))
        w.write(a[:4])
        w.write(a[4:])
        w.add("gone", torch.ones(5))
        w.discard()
        w.add_raw("raw", raw)
        w.add("s", torch.tensor(2.5))
    got = load_file(tmp_path / "out.safetensors")
    assert set(got) == {"a", "raw", "s"}
    assert torch.equal(got["a"], a) and torch.equal(got["raw"], src["raw"])
    assert got["s"].item() == 2.5 and got["raw"].dtype == torch.bfloat16
    info = read_header(tmp_path / "out.safetensors")[0]["a"]
    assert torch.equal(read_rows(info, 3, 7), a[3:7])
    assert torch.equal(read_elements(info, torch.tensor([0, 5, 29])), a.reshape(-1)[[0, 5, 29]])
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"not json")
    with pytest.raises(LayraError, match="not a safetensors file"):
        read_header(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_fingerprint_from_files_equals_the_loaded_model(arch, model_dirs):
    model, tok = load_model(str(model_dirs[arch]))
    assert ModelDir(model_dirs[arch]).fingerprint() == model_fingerprint(model, tok)
    live = LiveModel(model, tok)
    files = ModelDir(model_dirs[arch])
    assert live.shapes == files.shapes and live.arch == files.arch
    name = "model.embed_tokens.weight"
    assert torch.equal(live.read(name, 5, 9), files.read(name, 5, 9))


def test_arithmetic_is_exact():
    torch.manual_seed(0)
    parts = [
        (0.5 * 2.0, torch.randn(4, 6), torch.randn(5, 4)),
        (-1.5, torch.randn(2, 6), torch.randn(5, 2)),
    ]
    A, B = concat_lowrank(parts)
    assert A.shape == (6, 6) and B.shape == (5, 6)
    want = sum(c * b @ a for c, a, b in parts)
    torch.testing.assert_close(B @ A, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        lowrank_rows(parts[0][1], parts[0][2], 3.0, 1, 3), 3.0 * (parts[0][2] @ parts[0][1])[1:3]
    )
    assert torch.equal(weighted_sum([(2.0, torch.ones(3)), (-1.0, torch.ones(3))]), torch.ones(3))
    d = torch.ones(4, 2)
    zero_rows(d, torch.tensor([1, 5, 6]), start=4)  # global rows 5, 6 = local 1, 2
    assert d[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_parse_spec_and_size():
    assert parse_spec("vectors/gl:0.5") == ("vectors/gl", 0.5)
    assert parse_spec("vectors/gl:-1") == ("vectors/gl", -1.0)
    assert parse_spec("vectors/gl") == ("vectors/gl", 1.0)
    assert parse_spec("odd:name") == ("odd:name", 1.0)
    assert parse_spec("v", default=None) == ("v", None)
    assert parse_size("2GB") == 2_000_000_000 and parse_size("200M") == 200_000_000
    assert parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    with pytest.raises(LayraError):
        parse_size("lots")


def test_protected_rows_cover_special_and_chat_template_tokens():
    tok = tiny.make_tokenizer()
    tok.add_tokens(["<|turn|>", "<|unused|>"])  # added, not special
    tok.chat_template = "{% for m in messages %}<|turn|>{{ m.content }}{% endfor %}"
    turn, unused = tok.convert_tokens_to_ids(["<|turn|>", "<|unused|>"])
    ids = special_token_ids(tok)
    assert ids == [0, 1, 2, 3, turn] and unused not in ids
    assert resolve_rows("special,17", len(tok), tok) == [0, 1, 2, 3, 17, turn]
    assert resolve_rows("none", len(tok), tok) == []
    model = tiny.make_model("llama", 300)
    assert resolve_rows("special", 300, None, model.config) == [0, 1, 2]  # pad, bos, eos
    with pytest.raises(LayraError, match="outside the vocabulary"):
        resolve_rows("999", 300, tok)
    with pytest.raises(LayraError, match="not 'special'"):
        resolve_rows("specials", 300, tok)


def _full_copy(path, seed, base_dir, names=None):
    """A copy of the tiny llama with some (or all) tensors perturbed."""
    model, tok = load_model(str(base_dir))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if names is None or n in names:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_diff_keeps_only_changed_tensors_and_reproduces_the_model(model_dirs, tmp_path):
    base = model_dirs["llama"]
    names = {"model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"}
    trained = _full_copy(tmp_path / "t", 1, base, names)
    m = diff_models(base, trained, tmp_path / "vec", languages=["gl"])
    assert set(m["tensors"]) == names and m["source"]["kind"] == "diff"
    assert m["start"]["weights"] == ModelDir(base).fingerprint()["weights"]
    apply_to_dir(base, [(tmp_path / "vec", 1.0)], tmp_path / "out", protect_rows="none")
    want = tensors(trained)
    for n, t in tensors(tmp_path / "out").items():
        torch.testing.assert_close(t, want[n], atol=1e-7, rtol=0)


def test_matches_mergekit_task_arithmetic(model_dirs, tmp_path):
    pytest.importorskip("mergekit")  # test-only dependency: the dev extra in pyproject.toml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    base = model_dirs["llama"]
    a, b = _full_copy(tmp_path / "a", 1, base), _full_copy(tmp_path / "b", 2, base)
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "dtype": "float32",
        "parameters": {"normalize": False},
        "models": [
            {"model": str(a), "parameters": {"weight": 0.5}},
            {"model": str(b), "parameters": {"weight": 0.3}},
        ],
    }
    run_merge(
        MergeConfiguration.model_validate(cfg),
        str(tmp_path / "mk"),
        MergeOptions(copy_tokenizer=True, quiet=True),
    )
    diff_models(base, a, tmp_path / "da")
    diff_models(base, b, tmp_path / "db")
    apply_to_dir(
        base,
        [(tmp_path / "da", 0.5), (tmp_path / "db", 0.3)],
        tmp_path / "ours",
        protect_rows="none",
    )
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "mk")
    assert set(ours) == set(theirs)
    for n, t in ours.items():
        torch.testing.assert_close(t, theirs[n], atol=1e-6, rtol=1e-6)
    assert len(load_vector(tmp_path / "da").entries) == len(ours)  # every tensor changed


def test_in_memory_route_and_show(model_dirs, tmp_path, capsys):
    """A model that is not a safetensors directory (GGUF, hub id) is applied in memory."""
    from test_vectors_fixtures import make_run

    from layra.cli import main
    from layra.vectors.apply import _apply_live
    from layra.vectors.source import LiveModel

    base = model_dirs["gemma3_text"]
    run, _ = make_run(tmp_path / "run", base, "layra")
    assert main(["vector", "extract", str(run), "--out", str(tmp_path / "vec")]) == 0
    assert main(["vector", "show", str(tmp_path / "vec")]) == 0
    shown = capsys.readouterr().out
    assert "layra vector, languages gl" in shown and "14 low-rank + 1 dense" in shown
    assert "model.embed_tokens.weight (= lm_head.weight): dense [300, 32]" in shown
    apply_to_dir(base, [(tmp_path / "vec", 0.5)], tmp_path / "streamed")
    model, tok = load_model(str(base))
    vec = load_vector(tmp_path / "vec")
    rec = _apply_live(
        LiveModel(model, tok), [(vec, 0.5)], tmp_path / "live", False, False, "auto", None, False
    )
    assert rec["output_fingerprint"] == ModelDir(tmp_path / "streamed").fingerprint()
    ours, theirs = tensors(tmp_path / "streamed"), tensors(tmp_path / "live")
    for n, t in ours.items():
        torch.testing.assert_close(t, theirs[n], atol=1e-6, rtol=1e-6)


def test_row_blocks_cover_every_row_once_within_the_budget():
    from layra.vectors.arithmetic import row_blocks

    for rows, row_elems, budget in [(10, 3, 4 * 3 * 4), (7, 1000, 1), (1, 5, 1 << 20), (0, 5, 64)]:
        blocks = list(row_blocks(rows, row_elems, budget))
        assert [i for a, b in blocks for i in range(a, b)] == list(range(rows))
        assert all(b - a == 1 or (b - a) * 4 * row_elems <= budget for a, b in blocks)
    assert list(row_blocks(10, 3, 4 * 3 * 4)) == [(0, 4), (4, 8), (8, 10)]

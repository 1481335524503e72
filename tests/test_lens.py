"""Logit lens, token→language map, k/m suggestion and the `layra lens` command."""

import json
import math
from collections import Counter

import pytest
import tiny
import torch

from layra.arch import unembed
from layra.cli import main
from layra.errors import LayraError
from layra.lens import lens_profile, residual_states, set_masses, suggest_km
from layra.plots_lens import lens_heatmap
from layra.tokenlang import TokenMap, assign_tokens, token_language_map

IDS = torch.tensor([[5, 17, 42, 99, 150, 7, 260, 3, 64, 200, 11, 31]])


@pytest.fixture(scope="module")
def models(tok):
    gemma = tiny.make_model("gemma3_text", vocab_size=len(tok)).eval()
    # Soft-capping is off in the tiny config; switch it on so the lens must apply it.
    gemma.config.final_logit_softcapping = 2.0
    return {"llama": tiny.make_model("llama", vocab_size=len(tok)).eval(), "gemma3_text": gemma}


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_lens_at_last_layer_is_the_models_own_distribution(models, arch):
    model = models[arch]
    states = residual_states(model, IDS)
    assert len(states) == model.config.num_hidden_layers + 1
    with torch.no_grad():
        own = torch.log_softmax(model(IDS).logits, dim=-1)
        lens = torch.log_softmax(unembed(model, states[-1]), dim=-1)
        before = torch.log_softmax(unembed(model, states[-2]), dim=-1)
    assert torch.allclose(lens, own, atol=1e-5, rtol=0)  # log-probabilities, so also tiny ones
    # The state before the last block gives another distribution: the check is not vacuous.
    assert (before - own).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_states_are_the_raw_residual_stream(models, arch):
    model = models[arch]
    states = residual_states(model, IDS)
    with torch.no_grad():
        hs = model(IDS, output_hidden_states=True).hidden_states
    # HF's hidden_states agree except (in transformers 5) the last, which is already normed.
    for i in range(len(states) - 1):
        assert torch.equal(states[i], hs[i])
    # Layer 0 is what block 1 sees: for Gemma the embedding rows times sqrt(hidden).
    scale = math.sqrt(32) if arch == "gemma3_text" else 1.0
    rows = model.get_input_embeddings().weight[IDS[0]] * scale
    assert torch.allclose(states[0][0], rows, atol=1e-5)


def test_set_masses_exact(models):
    model = models["llama"]
    hidden = residual_states(model, IDS)[2][0]
    sets = [
        torch.tensor([5, 6, 7]),
        torch.tensor([], dtype=torch.long),
        torch.arange(len_vocab(model)),
    ]
    masses = set_masses(model, hidden, sets, chunk=5)  # chunking must not change anything
    probs = torch.softmax(unembed(model, hidden), -1)
    assert masses.shape == (IDS.shape[1], 3)
    assert torch.allclose(masses[:, 0], probs[:, [5, 6, 7]].sum(-1), atol=1e-6)
    assert torch.equal(masses[:, 1], torch.zeros(IDS.shape[1]))
    assert torch.allclose(masses[:, 2], torch.ones(IDS.shape[1]), atol=1e-6)


def len_vocab(model):
    return model.get_output_embeddings().weight.shape[0]


def test_profile_last_row_is_the_models_own_mass(models, tok):
    model = models["gemma3_text"]
    texts = {"eng": tiny.TEXT["en"], "glg": tiny.TEXT["gl"]}
    tmap = TokenMap(
        ids={"eng": [40, 41, 42, 43], "glg": list(range(100, 140))}, ratio=5, min_count=3
    )
    profile = lens_profile(model, tok, texts, tmap, english="eng", window=32)
    n = model.config.num_hidden_layers
    assert profile["num_layers"] == n and len(profile["own_mass"]["glg"]) == n + 1
    assert profile["own_mass"]["eng"] == profile["english_mass"]["eng"]
    ids = tok(texts["glg"])["input_ids"]
    with torch.no_grad():  # windows of 32 tokens, no BOS in this tokenizer
        probs = torch.cat(
            [
                torch.softmax(model(torch.tensor([ids[i : i + 32]])).logits[0], -1)
                for i in range(0, len(ids), 32)
            ]
        )
    assert profile["own_mass"]["glg"][n] == pytest.approx(
        probs[:, 100:140].sum(-1).mean().item(), abs=2e-6
    )
    assert profile["english_mass"]["glg"][n] == pytest.approx(
        probs[:, 40:44].sum(-1).mean().item(), abs=2e-6
    )
    assert profile["texts"]["glg"]["positions"] == len(ids)


def test_token_rule_exact():
    eng = Counter({1: 10, 2: 5, 3: 2, 4: 3})  # 20 tokens
    glg = Counter({1: 2, 2: 5, 5: 4, 6: 9})  # 20 tokens
    # 1: 10/20 vs 2/20 is exactly ratio 5 -> English; 2: shared; 3: below min count.
    assert assign_tokens({"eng": eng, "glg": glg}) == {"eng": [1, 4], "glg": [5, 6]}
    assert assign_tokens({"eng": eng, "glg": glg}, ratio=5.01) == {"eng": [4], "glg": [5, 6]}
    assert assign_tokens({"eng": eng, "glg": glg}, exclude={6}, min_count=4) == {
        "eng": [1],
        "glg": [5],
    }
    # Relative, not absolute, frequency: doubling one text changes nothing.
    doubled = Counter({t: 2 * n for t, n in glg.items()})
    assert assign_tokens({"eng": eng, "glg": doubled}, min_count=1) == {
        "eng": [1, 3, 4],
        "glg": [5, 6],
    }
    with pytest.raises(LayraError, match="at least two languages"):
        assign_tokens({"eng": eng})
    with pytest.raises(LayraError, match="ratio must be > 1"):
        assign_tokens({"eng": eng, "glg": glg}, ratio=1.0)


def test_token_language_map_on_tokenizer(tok):
    texts = {lang: tiny.TEXT[lang] * 3 for lang in ("en", "gl", "es")}
    tmap = token_language_map(tok, texts)
    special = set(tok.all_special_ids)
    for lang, ids in tmap.ids.items():
        assert not special & set(ids)
        for t in ids:  # spot-check the rule against the decoded token
            assert tok.decode([t]) in texts[lang]
    assert not set(tmap.ids["en"]) & set(tmap.ids["gl"])
    assert tmap.summary()["sizes"] == {lang: len(ids) for lang, ids in tmap.ids.items()}
    assert len(tmap.ids["en"]) > 0


def profile_with(curves, n, english="eng"):
    return {
        "format": "layra-lens-profile",
        "num_layers": n,
        "english": english,
        "languages": [english, *curves],
        "own_mass": {english: [0.9] * (n + 1), **curves},
        "english_mass": {english: [0.9] * (n + 1), **{k: [0.1] * (n + 1) for k in curves}},
    }


def test_suggest_rule_exact():
    # s = [1, .8, .6, .2, .1, .1, .2, .7, 1]: language-general from layer 3 to 6 of 8.
    glg = [0.5, 0.4, 0.3, 0.1, 0.05, 0.05, 0.1, 0.35, 0.5]
    k, m, why = suggest_km(profile_with({"glg": glg}, 8))
    assert (k, m) == (3, 2)
    assert "blocks 4..6 frozen" in why
    # A stricter threshold shrinks the general region to layers 4..5.
    assert suggest_km(profile_with({"glg": glg}, 8), threshold=0.15)[:2] == (4, 3)
    # Two languages: the curves are averaged after normalising by each one's output mass.
    spa = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.1, 0.2]  # s = 1 except layer 7 (0.5)
    # mean s: [1, .9, .8, .6, .55, .55, .6, .6, 1] -> nothing below .5 ... but below .58:
    assert suggest_km(profile_with({"glg": glg, "spa": spa}, 8), threshold=0.58)[:2] == (4, 3)
    assert suggest_km(profile_with({"glg": glg, "spa": spa}, 8), languages=["glg"])[:2] == (3, 2)


def test_suggest_edge_cases(tmp_path):
    # One general layer: k + m = N, nothing frozen.
    k, m, why = suggest_km(profile_with({"glg": [1, 1, 1, 0.1, 1, 1.0]}, 5))
    assert (k, m) == (3, 2) and "no block frozen" in why
    # No general layer: the paper's proportions (10/32, 2/32) of 18 layers.
    k, m, why = suggest_km(profile_with({"glg": [0.3] * 19}, 18))
    assert (k, m) == (6, 1) and "paper" in why
    # A language the model does not produce is skipped, with a note.
    k, m, why = suggest_km(profile_with({"glg": [0.5, 0.1, 0.1, 0.5], "swa": [0.001] * 4}, 3))
    assert (k, m) == (1, 1) and "swa skipped" in why
    with pytest.raises(LayraError, match="no usable language"):
        suggest_km(profile_with({"swa": [0.001] * 4}, 3))
    with pytest.raises(LayraError, match="not in the profile"):
        suggest_km(profile_with({"glg": [0.5] * 4}, 3), languages=["urd"])
    with pytest.raises(LayraError, match="expected 4"):
        suggest_km(profile_with({"glg": [0.5] * 3}, 3))
    # A path gives the same as the dict.
    p = tmp_path / "p.json"
    prof = profile_with({"glg": [0.5, 0.4, 0.3, 0.1, 0.05, 0.05, 0.1, 0.35, 0.5]}, 8)
    p.write_text(json.dumps(prof))
    assert suggest_km(p) == suggest_km(prof) == suggest_km(str(p))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(LayraError, match="not a layra lens profile"):
        suggest_km(tmp_path / "x.json")


def test_heatmap_png():
    prof = profile_with({"glg": [0.5, 0.4, 0.3, 0.1, 0.05, 0.05, 0.1, 0.35, 0.5]}, 8)
    png = lens_heatmap(prof, 3, 2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cli_profile_and_suggest(model_dirs, corpus_dir, tmp_path, capsys):
    out, png = tmp_path / "lens.json", tmp_path / "lens.png"
    args = [
        "lens",
        str(model_dirs["llama"]),
        "--text",
        f"eng={corpus_dir / 'en.txt'}",
        "--text",
        f"glg={corpus_dir / 'gl.txt'}",
        "--text",
        f"spa={corpus_dir / 'es.txt'}",
        "--out",
        str(out),
        "--heatmap",
        str(png),
        "--max-tokens",
        "48",
        "--window",
        "24",
    ]
    assert main(args) == 0
    prof = json.loads(out.read_text())
    assert prof["format"] == "layra-lens-profile" and prof["num_layers"] == 4
    assert prof["languages"] == ["eng", "glg", "spa"]
    assert all(
        len(prof[key][lang]) == 5
        for key in ("own_mass", "english_mass")
        for lang in prof["languages"]
    )
    assert prof["texts"]["glg"]["tokens_used"] == 48 and prof["texts"]["glg"]["path"].endswith(
        "gl.txt"
    )
    assert set(prof["fingerprint"]) == {"arch", "weights"} and "versions" in prof["provenance"]
    assert "suggestion" in prof and png.read_bytes()[:4] == b"\x89PNG"
    # The same outputs again need --overwrite.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    # suggest on a constructed profile file
    p = tmp_path / "made.json"
    p.write_text(
        json.dumps(profile_with({"glg": [0.5, 0.4, 0.3, 0.1, 0.05, 0.05, 0.1, 0.35, 0.5]}, 8))
    )
    assert main(["lens", "suggest", str(p)]) == 0
    assert capsys.readouterr().out.strip().endswith("k=3 m=2")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "glg=GL", "--out", "OUT"], "needs English text"),
        (["--text", "eng=missing.txt", "--out", "OUT"], "does not exist"),
        (["--text", "eng", "--out", "OUT"], "expected LANG=PATH"),
        (["--text", "eng=EN", "--text", "eng=GL", "--out", "OUT"], "given twice"),
        (["--text", "eng=EN"], "give --out"),
        (["--text", "eng=EN", "--out", "OUT", "--window", "1"], "--window must be"),
    ],
)
def test_cli_errors_are_one_line(model_dirs, corpus_dir, tmp_path, capsys, extra, message):
    subst = {
        "GL": str(corpus_dir / "gl.txt"),
        "EN": str(corpus_dir / "en.txt"),
        "OUT": str(tmp_path / "o.json"),
    }
    extra = [next((e.replace(k, v) for k, v in subst.items() if k in e), e) for e in extra]
    assert main(["lens", str(model_dirs["llama"]), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layra: error:") and message in err and err.count("\n") == 1


def test_cli_suggest_errors_are_one_line(tmp_path, capsys):
    for argv, message in [
        (["lens", "suggest", str(tmp_path / "none.json")], "does not exist"),
        (["lens", "suggest"], "usage: layra lens suggest PROFILE"),
        (["lens", "no/such/model/dir", "extra"], "unexpected argument"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("layra: error:") and message in err and err.count("\n") == 1


def test_lens_profile_and_suggest_are_subcommands(model_dirs, tmp_path, capsys):
    from layra.commands.lens import legacy_argv

    assert legacy_argv(["lens", "m", "--out", "x"]) == ["lens", "profile", "m", "--out", "x"]
    for argv in (["lens", "suggest", "p"], ["lens", "--help"], ["train", "m"]):
        assert legacy_argv(argv) == argv
    missing = str(tmp_path / "missing.txt")
    argv = ["lens", "profile", str(model_dirs["llama"]), "--text", f"eng={missing}", "--out", "o"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["lens"]) == 2
    assert "profile" in capsys.readouterr().out

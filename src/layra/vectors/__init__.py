"""Language vectors: ``Δ = θ_trained − θ_start``, kept factored where LoRA made it low-rank.

    from layra.vectors import extract_run, apply_to_dir, apply_to_model, combine
    extract_run("runs/gl", "vectors/gl")
    apply_to_dir("base-model", [("vectors/gl", 1.0)], "models/gl")
    with apply_to_model(model, [(load_vector("vectors/gl"), 0.5)], tokenizer=tok):
        ...  # evaluate θ0 + 0.5·Δ; leaving the block restores θ0 exactly

Format and semantics: docs/vectors.md.
"""

from layra.vectors.apply import Applied, apply_to_dir, apply_to_model
from layra.vectors.combine import combine
from layra.vectors.extract import diff_models, extract_run
from layra.vectors.format import Entry, Vector, load_vector, parse_spec
from layra.vectors.protect import special_token_ids

__all__ = [
    "Applied",
    "Entry",
    "Vector",
    "apply_to_dir",
    "apply_to_model",
    "combine",
    "diff_models",
    "extract_run",
    "load_vector",
    "parse_spec",
    "special_token_ids",
]

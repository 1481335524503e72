"""Make lm-eval 0.4.13's task utilities import under transformers 5.

lm-eval's Galician, Catalan, Spanish, CoQA and XQuAD task helpers do
``import transformers.data.metrics.squad_metrics``; transformers 5 removed that
module, so merely indexing ``xnli_gl`` or ``paws_gl`` fails with ``No module named
'transformers.data.metrics'`` (seen with lm-eval 0.4.13 and transformers 5.x). We register a
stand-in holding the two functions those helpers call, ported from the SQuAD v2
evaluation script that transformers 4 shipped, before lm-eval loads any task.
"""

from __future__ import annotations

import collections
import re
import string
import sys
import types

_NAME = "transformers.data.metrics"


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, articles and extra whitespace (SQuAD v2)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold, pred = _tokens(a_gold), _tokens(a_pred)
    common = collections.Counter(gold) & collections.Counter(pred)
    same = sum(common.values())
    if not gold or not pred:
        # If either is no-answer, F1 is 1 if they agree, 0 otherwise.
        return float(gold == pred)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def install() -> bool:
    """Register the stand-in if ``transformers.data.metrics`` is missing; True if installed."""
    if _NAME in sys.modules:
        return False
    try:
        import transformers.data.metrics  # noqa: F401  (transformers 4 still has it)

        return False
    except ImportError:
        pass
    import transformers.data as parent

    metrics = types.ModuleType(_NAME)
    squad = types.ModuleType(f"{_NAME}.squad_metrics")
    squad.normalize_answer = normalize_answer
    squad.compute_exact = compute_exact
    squad.compute_f1 = compute_f1
    metrics.squad_metrics = squad
    sys.modules[_NAME] = metrics
    sys.modules[f"{_NAME}.squad_metrics"] = squad
    parent.metrics = metrics
    return True

"""ROUGE-L F1 (longest common subsequence of words), as an `evaluate` metric shipped with sft-recipe.

Written here instead of depending on `rouge_score` (which pulls in nltk) and instead of
`evaluate.load("rouge")` (a hub download). Tokenization follows rouge_score's default: lowercase,
every run of characters other than a-z and 0-9 is a separator, no stemming. For one pair with
LCS length l, prediction length p and reference length r:

    precision = l / p,  recall = l / r,  F1 = 2 * precision * recall / (precision + recall)

The score is the mean F1 over pairs (rouge_score's bootstrap "mid" value converges to the same).
"""

import re

import datasets
import evaluate

_DESCRIPTION = "Mean ROUGE-L F1 (word-level longest common subsequence) between predictions and references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): reference answers, one per prediction.
Returns:
    rouge_l (float): mean F1 in [0, 1]; 0.0 for no pairs.
"""
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    return [w for w in _SEPARATORS.split(text.lower()) if w]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Classic dynamic programme, one row at a time: O(len(a) * len(b)) time, O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    p, r = words(prediction), words(reference)
    common = lcs_length(p, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"rouge_l": 0.0}
        scores = [rouge_l_f1(p, r) for p, r in zip(predictions, references)]
        return {"rouge_l": sum(scores) / len(scores)}

"""Exact match after whitespace normalisation, as an `evaluate` metric shipped with sft-recipe.

`evaluate.load("exact_match")` would fetch a script from the hub; this module loads by path and
works offline. Answers count as equal when they match after collapsing runs of whitespace and
stripping the ends, so a trailing newline in a generation is not a miss.
"""

import datasets
import evaluate

from sft_recipe.commands.metrics import normalise_answer

_DESCRIPTION = "Share of predictions equal to their reference after whitespace normalisation."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): reference answers, one per prediction.
Returns:
    exact_match (float): share of exact matches in [0, 1]; 0.0 for no pairs.
Examples:
    >>> metric = evaluate.load("sft_recipe/metrics/exact_match")  # doctest: +SKIP
    >>> metric.compute(predictions=["a  b", "c"], references=["a b\\n", "d"])  # doctest: +SKIP
    {'exact_match': 0.5}
"""


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"exact_match": 0.0}
        hits = sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(references)}

"""Scoring samples with graders (`llama_post.apis.post_training.graders`), with no server.

    runner = GraderRunner(grader, GraderSettings(), scorer)  # a 400 naming a bad field
    runner.grade(item, Sample(output_text="..."))  # GradeResult(score, sub_scores, error)

One module per kind: `matchers` (string_check, regex, json_schema), `similarity`
(text_similarity), `score_model`, `python` (the sandbox), `formula` (multi's), `templates`;
`results` holds what grading answers and the settings it runs under.
"""

from llama_post.graders.results import GradeResult, GraderSettings
from llama_post.graders.runner import GraderRunner
from llama_post.graders.score_model import ModelScorer
from llama_post.graders.templates import Sample

__all__ = ["GradeResult", "GraderRunner", "GraderSettings", "ModelScorer", "Sample"]

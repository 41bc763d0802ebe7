"""What a dataset's rows are for, which the row schemas (`rows.py`) and the requests
(`models.py`) both read."""

from __future__ import annotations

from enum import StrEnum


class DatasetPurpose(StrEnum):
    """What the rows are for.

    llama-post's own purposes fix the rows' schema, checked at registration:

    - `instruct`: `prompt`, `completion` (strings)
    - `dialog`: `messages`, a list of `{role, content}` with at least one assistant turn
    - `preference`: `prompt` or `messages`, then `chosen` and `rejected`
    - `prompt`: `prompt` or `messages` (the conversation so far), and any reference fields a
      grader reads (`answer`, ...): what reinforcement fine-tuning samples from

    Llama Stack's (`post-training/messages`, `eval/question-answer`, `eval/messages-answer`)
    keep any JSON object as a row, as Llama Stack does; a job checks them when it is created,
    in the shape its `data_format` reads (`llama_post/apis/datasets/shapes.py`).
    """

    instruct = "instruct"
    dialog = "dialog"
    preference = "preference"
    prompt = "prompt"
    post_training_messages = "post-training/messages"
    eval_question_answer = "eval/question-answer"
    eval_messages_answer = "eval/messages-answer"

    @property
    def free_form(self) -> bool:
        """Rows of any shape, checked by the job that reads them (Llama Stack's purposes)."""
        return "/" in self.value


FREE_FORM = frozenset(p for p in DatasetPurpose if p.free_form)

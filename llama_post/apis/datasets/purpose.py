"""What a dataset's rows are for, which the row schemas (`rows.py`) and the requests
(`models.py`) both read."""

from __future__ import annotations

from enum import StrEnum


class DatasetPurpose(StrEnum):
    """What the rows are for; it fixes their schema.

    - `instruct`: `prompt`, `completion` (strings)
    - `dialog`: `messages`, a list of `{role, content}` with at least one assistant turn
    - `preference`: `prompt` or `messages`, then `chosen` and `rejected`
    - `prompt`: `prompt` or `messages` (the conversation so far), and any reference fields a
      grader reads (`answer`, ...): what reinforcement fine-tuning samples from
    """

    instruct = "instruct"
    dialog = "dialog"
    preference = "preference"
    prompt = "prompt"

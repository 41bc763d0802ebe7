"""The training methods (SFT, DPO, GRPO), one object each: what the core knows of a method.

A method is named once, by its request's type (`request.method`); everything else that
varies by method is a field of its object here, or of its provider-side object
(`providers/training/methods.py`: the recipe, the estimate's FLOPs, whether it runs as several
ranks). Adding a method is one object in each, and no switch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from llama_post.apis.datasets import DatasetPurpose
from llama_post.apis.datasets.shapes import DataFormat, preference_rows, sft_rows
from llama_post.apis.post_training.jobs import PostTrainingJob
from llama_post.apis.post_training.models import (
    JobRequest,
    PreferenceOptimizeRequest,
    ReinforceRequest,
    SupervisedFineTuneRequest,
    TrainingRequest,
)

R = TypeVar("R", bound=JobRequest)
Rows = list[dict[str, Any]]
# Rows of Llama Stack's purposes (kept as given) read in the shape the method reads for the
# job's `data_format` (`rows, data_format, param -> rows, data_format`; a 400 naming the row)
ShapeRows = Callable[[Rows, DataFormat | None, str], tuple[Rows, DataFormat | None]]


class Creates(Protocol):
    """The create routes of `PostTrainingJobs`, one per method."""

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob: ...

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob: ...

    async def reinforce(self, request: ReinforceRequest) -> PostTrainingJob: ...


@dataclass(frozen=True)
class Method(Generic[R]):
    name: Literal["sft", "dpo", "grpo"]  # `request.method`, and a created job's id prefix
    request_type: type[R]
    # the dataset purposes its rows may have; reading an uploaded file, the first it fits
    purposes: tuple[DatasetPurpose, ...]
    openai: Literal["supervised", "dpo", "reinforcement"]  # OpenAI's `method.type`
    # the request's `data_format` names the dataset's purpose (SFT); otherwise it says which
    # prompt field every row carries
    format_is_purpose: bool
    create: Callable[[Creates, R], Awaitable[PostTrainingJob]]  # the route creating it
    # reads Llama Stack's purposes too (`DatasetPurpose.free_form`), in this shape; None: not
    shape_rows: ShapeRows | None = None

    def narrow(self, request: TrainingRequest) -> R:
        """The request as this method's type (a request of another method is a bug)."""
        if not isinstance(request, self.request_type):
            raise TypeError(f"a {self.name} job got a {type(request).__name__}")
        return request


SFT = Method(
    name="sft",
    request_type=SupervisedFineTuneRequest,
    purposes=(DatasetPurpose.dialog, DatasetPurpose.instruct),  # chat, else prompt/completion
    openai="supervised",
    format_is_purpose=True,
    create=lambda jobs, request: jobs.supervised_fine_tune(request),
    shape_rows=sft_rows,
)
DPO = Method(
    name="dpo",
    request_type=PreferenceOptimizeRequest,
    purposes=(DatasetPurpose.preference,),
    openai="dpo",
    format_is_purpose=False,
    create=lambda jobs, request: jobs.preference_optimize(request),
    shape_rows=lambda rows, data_format, param: (preference_rows(rows, param), data_format),
)
GRPO = Method(
    name="grpo",
    request_type=ReinforceRequest,
    purposes=(DatasetPurpose.prompt,),
    openai="reinforcement",
    format_is_purpose=False,
    create=lambda jobs, request: jobs.reinforce(request),
)

METHODS: dict[str, Method[Any]] = {m.name: m for m in (SFT, DPO, GRPO)}


def method_of(request: TrainingRequest) -> Method[Any]:
    """The request's method, decided once by its type."""
    return METHODS[request.method]


def openai_method(kind: str) -> Method[Any]:
    """The method of OpenAI's `method.type`."""
    return next(m for m in METHODS.values() if m.openai == kind)

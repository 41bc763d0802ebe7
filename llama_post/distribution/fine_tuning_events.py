"""What OpenAI's SDK reads back of a native job: its events, its checkpoints, a page of either."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from llama_post.apis.post_training.jobs import (
    Checkpoint,
    JobStatus,
    PostTrainingJobStatusResponse,
    StepMetrics,
)
from llama_post.apis.post_training.openai_fine_tuning import (
    CheckpointMetrics,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    PageRequest,
)
from llama_post.errors import NotFoundError


def job_events(
    status: PostTrainingJobStatusResponse, metrics: list[StepMetrics], training_file: str
) -> list[FineTuningJobEvent]:
    """The job's history, oldest first: creation, start, each step, each checkpoint, its end."""
    job = status.job_uuid
    created = status.scheduled_at or 0
    events = [
        FineTuningJobEvent(
            id=f"ftevent-{job}-created",
            created_at=created,
            level="info",
            message=f"Created fine-tuning job: {job}",
        ),
        FineTuningJobEvent(
            id=f"ftevent-{job}-validated",
            created_at=created,
            level="info",
            message=f"Validated training file: {training_file}",
        ),
    ]
    if status.started_at:
        events.append(
            FineTuningJobEvent(
                id=f"ftevent-{job}-started",
                created_at=status.started_at,
                level="info",
                message="Fine-tuning job started",
            )
        )
    total = status.progress.total_steps
    timed: list[tuple[float, FineTuningJobEvent]] = []
    for m in metrics:
        data = {
            "step": m.step,
            "train_loss": m.loss,
            "learning_rate": m.lr,
            "total_steps": total,
            "tokens_per_second": m.tokens_per_second,
        }
        if m.validation_loss is not None:
            data["valid_loss"] = m.validation_loss
        if m.reward_mean is not None:  # reinforcement: the grader's mean score
            data["train_mean_reward"] = m.reward_mean
        if m.validation_reward is not None:
            data["valid_mean_reward"] = m.validation_reward
        loss = f"{m.loss:.4f}" if m.loss is not None else "n/a"
        timed.append(
            (
                m.timestamp,
                FineTuningJobEvent(
                    id=f"ftevent-{job}-step-{m.step}",
                    created_at=int(m.timestamp),
                    level="info",
                    message=f"Step {m.step}/{total}: training loss={loss}",
                    type="metrics",
                    data=data,
                ),
            )
        )
    for c in status.checkpoints:
        timed.append(
            (
                c.created_at + 0.5,  # after the step that made it
                FineTuningJobEvent(
                    id=f"ftevent-{job}-checkpoint-{c.step}",
                    created_at=c.created_at,
                    level="info",
                    message=f"Checkpoint created at step {c.step}",
                ),
            )
        )
    for before, attempt in zip(status.attempts, status.attempts[1:], strict=False):
        where = f", resuming from {attempt.resumed_from}" if attempt.resumed_from else ""
        timed.append(
            (
                attempt.started_at,
                FineTuningJobEvent(
                    id=f"ftevent-{job}-attempt-{attempt.attempt}",
                    created_at=attempt.started_at,
                    level="warn",
                    message=f"Attempt {attempt.attempt} started{where}; attempt "
                    f"{before.attempt} ended: {before.ended_because}",
                ),
            )
        )
    events += [e for _, e in sorted(timed, key=lambda pair: pair[0])]
    if status.status in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled):
        end = status.completed_at or created
        if status.status == JobStatus.completed:
            events.append(
                FineTuningJobEvent(
                    id=f"ftevent-{job}-model",
                    created_at=end,
                    level="info",
                    message=f"New fine-tuned model created: {status.fine_tuned_model}",
                )
            )
        level: Literal["info", "error"] = "error" if status.status == JobStatus.failed else "info"
        message = {
            JobStatus.completed: "The job has successfully completed",
            JobStatus.cancelled: "The job was cancelled",
            JobStatus.failed: f"The job failed: {status.error}",
        }[status.status]
        events.append(
            FineTuningJobEvent(
                id=f"ftevent-{job}-end", created_at=end, level=level, message=message
            )
        )
    return events


def job_checkpoint(c: Checkpoint) -> FineTuningJobCheckpoint:
    metrics = c.training_metrics
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{c.post_training_job_id}-{c.step}",
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.model_id or c.identifier,
        fine_tuning_job_id=c.post_training_job_id,
        metrics=CheckpointMetrics(
            step=c.step,
            train_loss=metrics.train_loss if metrics else None,
            valid_loss=metrics.validation_loss if metrics else None,
            full_valid_loss=metrics.validation_loss if metrics else None,
        ),
        step_number=c.step,
    )


T = TypeVar("T")


def page_of(items: list[T], request: PageRequest, key: Callable[[T], str]) -> tuple[list[T], bool]:
    if request.after is not None:
        ids = [key(i) for i in items]
        if request.after not in ids:
            raise NotFoundError(f"after: no item {request.after!r}", param="after")
        items = items[ids.index(request.after) + 1 :]
    page = items[: request.limit]
    return page, len(items) > len(page)

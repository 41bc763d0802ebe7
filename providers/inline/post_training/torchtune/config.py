from pydantic import Field

from llama_post.schema import UserPath
from providers.jobs.config import LocalJobsConfig


class TorchtunePostTrainingConfig(LocalJobsConfig):
    """inline::torchtune's jobs take the shared local-job settings and where torchtune lives."""

    environment: UserPath | None = Field(
        None,
        description="The virtual environment with torchtune 0.6.1; unset: the one "
        "`make engine-torchtune` builds for this checkout.",
    )

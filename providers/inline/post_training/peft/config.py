from providers.jobs.config import LocalJobsConfig


class PeftPostTrainingConfig(LocalJobsConfig):
    """inline::peft's jobs take the shared local-job settings and nothing more."""

"""How the shared job machinery starts a job's worker: its launcher, a provider setting in
run.yaml (`launcher: {type: local | torchrun | ray, ...}`). The recipe is the same file in every
case; under torchrun it finds its rank in the environment (`providers/training/distributed.py`),
under Ray it runs as a Ray job's entrypoint (`providers/jobs/ray.py`).

These are the config models only (no torch, no httpx import): the registry loads them with the
provider's config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llama_post.schema import StrictModel


class LocalLauncher(StrictModel):
    """One worker process on this machine (the default)."""

    type: Literal["local"] = "local"
    preload: bool = Field(
        True,
        description="Fork each worker from a process that has imported torch, transformers and "
        "the recipe's modules once (providers/jobs/forks.py): a job starts about 3 s sooner. "
        "false: a fresh `python -m` process per worker.",
    )


class TorchrunLauncher(StrictModel):
    """`torchrun` starts `nproc_per_node` ranks of the recipe (per node): gloo on CPU, NCCL on
    CUDA; the global batch is batch_size x ranks x gradient_accumulation_steps."""

    type: Literal["torchrun"] = "torchrun"
    nproc_per_node: int = Field(2, ge=1, le=1024, description="Ranks on this node.")
    nnodes: int = Field(1, ge=1, le=4096, description="Nodes taking part.")
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="host:port of the rendezvous (c10d), which every node reaches; unset: "
        "--standalone, one node only.",
    )
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="none: every rank holds the model and gradients are averaged (DDP); fsdp: "
        "decoder layers sharded across ranks with FSDP2 (fully_shard).",
    )


class RayLauncher(StrictModel):
    """A Ray job per attempt, submitted to a Ray cluster's Jobs API (its dashboard address).

    The job's folder (under storage_dir) and its checkpoints (under checkpoint_root) must be on
    storage every node of the cluster sees at the same paths (NFS, a shared disk; on one
    machine any folder): a job is refused at creation when a probe job on the cluster cannot
    write there or this server cannot read back what it wrote."""

    type: Literal["ray"] = "ray"
    address: str = Field(
        "http://127.0.0.1:8265",
        pattern=r"^https?://[^\s/]+$",
        description="The Ray dashboard's URL, which serves the Jobs API.",
    )
    python: str | None = Field(
        None,
        description="The interpreter a Ray job runs the recipe with (on a cluster: the nodes' "
        "environment with llama-post installed); unset: this server's.",
    )
    pythonpath: str | None = Field(
        None,
        description="PYTHONPATH for the Ray job (where llama-post's checkout is on the nodes); "
        "unset: this server's checkout.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs the Ray job's entrypoint reserves.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs the Ray job's entrypoint reserves.")
    torchrun: TorchrunLauncher | None = Field(
        None, description="Run the recipe under torchrun inside the Ray job, with these options."
    )
    poll_seconds: float = Field(1.0, gt=0, le=60, description="How often a job's state is read.")


Launcher = Annotated[LocalLauncher | TorchrunLauncher | RayLauncher, Field(discriminator="type")]

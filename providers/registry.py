"""Every provider type llama-post knows, with its config class and factory."""

from llama_post.apis import Api
from llama_post.distribution.spec import ProviderSpec, build_registry
from providers.inline.datasets import localfs as localfs_datasets
from providers.inline.files import localfs as localfs_files
from providers.inline.inference import transformers
from providers.inline.post_training import peft, torchtune
from providers.remote import llama_post as remote_llama_post
from providers.remote.inference import vllm

REGISTRY = build_registry(
    [
        ProviderSpec(
            api=Api.files,
            provider_type="inline::localfs",
            config_class=localfs_files.LocalFilesConfig,
            factory=localfs_files.create,
            description="Files on the local disk, metadata in SQLite.",
        ),
        ProviderSpec(
            api=Api.datasets,
            provider_type="inline::localfs",
            config_class=localfs_datasets.LocalDatasetsConfig,
            factory=localfs_datasets.create,
            deps=(Api.files,),
            description="Validated rows as JSONL on the local disk, metadata in SQLite.",
        ),
        ProviderSpec(
            api=Api.inference,
            provider_type="inline::transformers",
            config_class=transformers.TransformersInferenceConfig,
            factory=transformers.create,
            description="transformers on CPU or CUDA, continuous batching, LoRA adapters.",
        ),
        ProviderSpec(
            api=Api.inference,
            provider_type="remote::vllm",
            config_class=vllm.VLLMInferenceConfig,
            factory=vllm.create,
            description="A vLLM server: its models, chat and completions; adapters hot-loaded.",
        ),
        ProviderSpec(
            api=Api.post_training,
            provider_type="inline::peft",
            config_class=peft.PeftPostTrainingConfig,
            factory=peft.create,
            deps=(Api.datasets, Api.models),
            description="LoRA and full fine-tuning with transformers + peft, in worker processes.",
        ),
        ProviderSpec(
            api=Api.training_sessions,
            provider_type="inline::peft",
            config_class=peft.LocalSessionsConfig,
            factory=peft.create_sessions,
            deps=(Api.models,),
            description="Interactive LoRA training (the caller's loop, Tinker's API): each "
            "training model in a worker process with transformers + peft.",
        ),
        ProviderSpec(
            api=Api.post_training,
            provider_type="inline::torchtune",
            config_class=torchtune.TorchtunePostTrainingConfig,
            factory=torchtune.create,
            deps=(Api.datasets, Api.models),
            description="LoRA SFT and DPO by torchtune's recipes, in torchtune's own environment "
            "(make engine-torchtune).",
        ),
        ProviderSpec(
            api=Api.files,
            provider_type="remote::llama-post",
            config_class=remote_llama_post.RemoteLlamaPostConfig,
            factory=remote_llama_post.create_files,
            description="The Files API of another llama-post.",
        ),
        ProviderSpec(
            api=Api.datasets,
            provider_type="remote::llama-post",
            config_class=remote_llama_post.RemoteLlamaPostConfig,
            factory=remote_llama_post.create_datasets,
            description="The Datasets API of another llama-post.",
        ),
        ProviderSpec(
            api=Api.inference,
            provider_type="remote::llama-post",
            config_class=remote_llama_post.RemoteLlamaPostConfig,
            factory=remote_llama_post.create_inference,
            description="The models another llama-post serves (bases and adapters), by its ids.",
        ),
        ProviderSpec(
            api=Api.post_training,
            provider_type="remote::llama-post",
            config_class=remote_llama_post.RemotePostTrainingConfig,
            factory=remote_llama_post.create_post_training,
            deps=(Api.models,),
            description="Jobs run on another llama-post (a trainer box); each finished job's "
            "final checkpoint is fetched as an archive and served here.",
        ),
    ]
)

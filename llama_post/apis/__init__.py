"""The APIs llama-post serves: each a Protocol in its own package."""

from enum import StrEnum

from llama_post.apis.batches import Batches
from llama_post.apis.datasets import Datasets
from llama_post.apis.evaluations import Evaluations
from llama_post.apis.files import Files
from llama_post.apis.inference import Inference
from llama_post.apis.inspect import Inspect
from llama_post.apis.llm_engine import LLMEngine
from llama_post.apis.models import Models
from llama_post.apis.post_training import PostTraining
from llama_post.apis.training_sessions import TrainingSessions


class Api(StrEnum):
    files = "files"
    datasets = "datasets"
    models = "models"
    inference = "inference"
    post_training = "post_training"
    inspect = "inspect"
    batches = "batches"
    llm_engine = "llm_engine"
    training_sessions = "training_sessions"
    evaluations = "evaluations"


PROTOCOLS: dict[Api, type] = {
    Api.files: Files,
    Api.datasets: Datasets,
    Api.models: Models,
    Api.inference: Inference,
    Api.post_training: PostTraining,
    Api.inspect: Inspect,
    Api.batches: Batches,
    Api.llm_engine: LLMEngine,
    Api.training_sessions: TrainingSessions,
    Api.evaluations: Evaluations,
}

# APIs the stack implements itself; run.yaml names providers only for the others.
BUILTIN_APIS = frozenset({Api.inspect, Api.models, Api.batches, Api.llm_engine, Api.evaluations})

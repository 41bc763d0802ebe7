from llama_post.apis.models.api import Models
from llama_post.apis.models.models import (
    MODEL_ID_PATTERN,
    AdapterSource,
    DeleteModelResponse,
    GGUFSource,
    HuggingFaceSource,
    ListModelsResponse,
    Model,
    ModelInfo,
    ModelSource,
    RegisterModelRequest,
    SamplingDefaults,
)

__all__ = [
    "MODEL_ID_PATTERN",
    "AdapterSource",
    "DeleteModelResponse",
    "GGUFSource",
    "HuggingFaceSource",
    "ListModelsResponse",
    "Model",
    "ModelInfo",
    "ModelSource",
    "Models",
    "RegisterModelRequest",
    "SamplingDefaults",
]

"""The APIs llama-post serves: each a Protocol in its own package."""

from enum import StrEnum

from llama_post.apis.datasets import Datasets
from llama_post.apis.files import Files
from llama_post.apis.inspect import Inspect


class Api(StrEnum):
    files = "files"
    datasets = "datasets"
    inspect = "inspect"


PROTOCOLS: dict[Api, type] = {
    Api.files: Files,
    Api.datasets: Datasets,
    Api.inspect: Inspect,
}

# APIs the stack implements itself; run.yaml names providers only for the others.
BUILTIN_APIS = frozenset({Api.inspect})

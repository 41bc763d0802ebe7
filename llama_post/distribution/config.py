"""run.yaml: reading it, substituting `${env.NAME:=default}`, and validating all of it at once."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from llama_post.apis import BUILTIN_APIS, Api
from llama_post.apis.models import RegisterModelRequest
from llama_post.distribution.spec import Registry, installed_registry
from llama_post.distribution.url_prefixes import UrlPrefixText
from llama_post.errors import ConfigError, ErrorDetail, _join_loc
from llama_post.graders import GraderSettings
from llama_post.schema import StrictModel, UserPath

_ENV = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?::=([^}]*))?\}")
PROVIDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ProviderConfig(StrictModel):
    provider_id: str = Field(pattern=PROVIDER_ID_PATTERN)
    provider_type: str
    config: dict[str, Any] = {}


class MetricsConfig(StrictModel):
    enabled: bool = Field(True, description="Serve Prometheus metrics at `/metrics`.")
    public: bool = Field(
        False,
        description="With auth on, serve `/metrics` without a key. Otherwise it needs an admin "
        "key: its labels name every owner's models.",
    )


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8321, ge=0, le=65535)
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object a line (time, level, logger, message, request_id) "
        "and one line per request. `llama-post run --log-format` and LLAMA_POST_LOG_FORMAT "
        "override it.",
    )
    metrics: MetricsConfig = MetricsConfig()


class AuthConfig(StrictModel):
    enabled: bool | None = Field(
        None,
        description="API keys required (`llama-post keys create`). Unset: on when the server "
        "binds anything but loopback, where starting without a key is an error.",
    )


class BatchesConfig(StrictModel):
    """OpenAI's Batch API, served by the stack over its Files and Inference APIs."""

    max_concurrent_lines: int = Field(
        32,
        ge=1,
        le=1024,
        description="Lines of one batch in flight at once, so the engine decodes them as one "
        "batch; set it to the inference provider's `max_batch_size` or above.",
    )
    max_input_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="A larger input file is a 413, as at OpenAI."
    )
    max_input_lines: int = Field(
        50_000, ge=1, description="An input file with more lines is a 413, as at OpenAI."
    )
    window_seconds: int = Field(
        86_400,
        ge=1,
        description="How long `24h` is: a batch not done this long after its creation "
        "expires (its lines not run go to the error file). Shorter only for tests.",
    )


class PythonGraderConfig(StrictModel):
    """The `python` grader runs users' code on this machine, sandboxed (a process of its own, no
    network, these limits per sample); off unless a distribution turns it on."""

    enabled: bool = False
    cpu_seconds: float = Field(5, gt=0, le=600, description="CPU time per sample.")
    memory_mb: int = Field(512, ge=64, le=65536, description="Address space of the process.")
    timeout_s: float = Field(10, gt=0, le=3600, description="Wall time per sample.")


class GradersConfig(StrictModel):
    python: PythonGraderConfig = PythonGraderConfig()

    def settings(self) -> GraderSettings:
        """What a `GraderRunner` (in the server or a training worker) is built with."""
        p = self.python
        return GraderSettings(p.enabled, p.cpu_seconds, p.memory_mb, p.timeout_s)


Capability = Literal["logprobs", "fine_tuning", "structured_outputs"]


class RunConfig(StrictModel):
    version: Literal[1] = 1
    distribution: str
    storage_dir: UserPath = Field(
        Path("~/.llama-post"), validate_default=True, description="The stack's own state."
    )
    imported_models_dir: UserPath | None = Field(
        None,
        description="Where models registered from archives are unpacked (default "
        "`<storage_dir>/checkpoints/imported`); the inference provider must read it "
        "(`model_dirs`).",
    )
    archive_url_prefixes: list[UrlPrefixText] = Field(
        [],
        description="The only URLs `POST /v1/models` fetches archive sources from (a remote "
        "llama-post's base URL, say); none by default, so a caller cannot make the server "
        "fetch arbitrary addresses.",
    )
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    providers: dict[Api, list[ProviderConfig]]
    models: list[RegisterModelRequest] = Field([], description="Registered at every start.")
    batches: BatchesConfig = BatchesConfig()
    graders: GradersConfig = GradersConfig()
    capabilities: list[Capability] = Field(
        [],
        description="What this distribution offers beyond the core (models, chat, completions, "
        "streams); the conformance suite checks each one it declares.",
    )


class ResolvedProvider(BaseModel):
    """A provider entry whose `config` has been validated by its registered config class."""

    api: Api
    provider_id: str
    provider_type: str
    config: BaseModel


def substitute_env(node: Any, env: dict[str, str], path: str, errors: list[ErrorDetail]) -> Any:
    """Replace `${env.NAME}` and `${env.NAME:=default}` in every string of a YAML tree."""
    if isinstance(node, dict):
        return {k: substitute_env(v, env, _join_loc(path, [k]), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, env, _join_loc(path, [i]), errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        errors.append(ErrorDetail(field=path, message=f"environment variable {name} is not set"))
        return ""

    return _ENV.sub(replace, node)


def load_run_config(
    source: Path | str | dict[str, Any],
    env: dict[str, str] | None = None,
    registry: Registry | None = None,
) -> tuple[RunConfig, list[ResolvedProvider]]:
    """Read, substitute and validate a distribution; raise ConfigError listing every problem."""
    registry = installed_registry() if registry is None else registry
    raw = _read(source) if not isinstance(source, dict) else source
    where = str(source) if not isinstance(source, dict) else "run config"
    errors: list[ErrorDetail] = []
    data = substitute_env(raw, dict(os.environ) if env is None else env, "", errors)
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as exc:
        errors += [
            ErrorDetail(field=_join_loc("", e["loc"]), message=e["msg"]) for e in exc.errors()
        ]
        raise ConfigError(f"{where} is not a valid distribution", details=errors) from None

    resolved: list[ResolvedProvider] = []
    for api, entries in run.providers.items():
        if api in BUILTIN_APIS:
            errors.append(
                ErrorDetail(field=f"providers.{api}", message="served by the stack itself")
            )
            continue
        ids = [e.provider_id for e in entries]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            errors.append(ErrorDetail(field=f"providers.{api}", message=f"duplicate {dup!r}"))
        for i, entry in enumerate(entries):
            path = f"providers.{api}[{i}]"
            spec = registry.get((api, entry.provider_type))
            if spec is None:
                known = ", ".join(sorted(t for a, t in registry if a == api)) or "none"
                errors.append(
                    ErrorDetail(
                        field=f"{path}.provider_type",
                        message=f"unknown provider type {entry.provider_type!r} for {api} "
                        f"(known: {known})",
                    )
                )
                continue
            try:
                config = spec.config_class.model_validate(entry.config)
            except ValidationError as exc:
                errors += [
                    ErrorDetail(field=_join_loc(f"{path}.config", e["loc"]), message=e["msg"])
                    for e in exc.errors()
                ]
                continue
            resolved.append(
                ResolvedProvider(
                    api=api,
                    provider_id=entry.provider_id,
                    provider_type=entry.provider_type,
                    config=config,
                )
            )

    served = set(run.providers) | BUILTIN_APIS
    inference_ids = [e.provider_id for e in run.providers.get(Api.inference, [])]
    for i, declared in enumerate(run.models):
        if not inference_ids:
            errors.append(
                ErrorDetail(field=f"models[{i}]", message="no inference provider serves it")
            )
        elif declared.provider_id is None and len(inference_ids) > 1:
            errors.append(
                ErrorDetail(
                    field=f"models[{i}].provider_id",
                    message=f"name one of {', '.join(inference_ids)}",
                )
            )
        elif declared.provider_id is not None and declared.provider_id not in inference_ids:
            errors.append(
                ErrorDetail(
                    field=f"models[{i}].provider_id",
                    message=f"no inference provider {declared.provider_id!r}",
                )
            )
    for provider in resolved:
        for dep in registry[(provider.api, provider.provider_type)].deps:
            if dep not in served:
                errors.append(
                    ErrorDetail(
                        field=f"providers.{provider.api}",
                        message=f"{provider.provider_type} needs the {dep} API, "
                        f"which this distribution does not provide",
                    )
                )
    if errors:
        raise ConfigError(f"{where} has {len(errors)} problem(s)", details=errors)
    return run, resolved


def _read(path: Path | str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read distribution {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with `distribution` and `providers`")
    return data

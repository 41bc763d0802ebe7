"""LLM Engine's API (`/llm-engine/v1`), over the native implementations the stack holds.

Nothing here stores anything: a completion is an Inference call, a file a Files API file, a
fine-tune a post-training job (its training CSV registered as an `instruct` dataset, `response`
read as `completion`), its model the `ft/<job>` the job registers, a model endpoint a served
model, a model download its final checkpoint's archive URL, a batch completion an OpenAI batch
(`/v1/batches`) over a JSONL of `/v1/completions` requests written through the Files API.
Every implementation it calls is the guarded one, so owners apply as on the native routes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from llama_post.apis.datasets import DatasetPurpose, RegisterDatasetRequest
from llama_post.apis.datasets.models import RowsDataSource
from llama_post.apis.files import FilePurpose
from llama_post.apis.files import UploadFileRequest as NativeUpload
from llama_post.apis.inference.models import Completion
from llama_post.apis.inference.models import CompletionRequest as NativeCompletion
from llama_post.apis.llm_engine.models import (
    HYPERPARAMETERS,
    BatchCompletionsRequest,
    BatchCompletionsResponse,
    CancelFineTuneResponse,
    CompletionOutput,
    CompletionRequest,
    CompletionStreamOutput,
    CompletionStreamResponse,
    CompletionSyncResponse,
    CreateFineTuneRequest,
    CreateFineTuneResponse,
    DeleteResponse,
    EngineFile,
    FileContentResponse,
    FineTune,
    FineTuneEvent,
    FineTuneEventsResponse,
    FineTuneStatus,
    ListFilesResponse,
    ListFineTunesResponse,
    ListModelEndpointsResponse,
    ModelDownloadRequest,
    ModelDownloadResponse,
    ModelEndpoint,
    StreamError,
    StreamErrorContent,
    TokenOutput,
    UploadFileRequest,
    UploadFileResponse,
)
from llama_post.apis.models.models import Model
from llama_post.apis.post_training.jobs import (
    JobStatus,
    PostTrainingJobStatusResponse,
)
from llama_post.apis.post_training.models import (
    SupervisedFineTuneRequest,
)
from llama_post.apis.post_training.openai_fine_tuning import AUTO_BATCH_SIZE, PageRequest
from llama_post.codec import build_request
from llama_post.errors import (
    ConflictError,
    InvalidRequestError,
    LlamaPostError,
    NotFoundError,
    NotSupportedError,
)
from llama_post.routes import Dispatcher
from llama_post.schema import UploadedFile

STATUS: dict[JobStatus, FineTuneStatus] = {
    JobStatus.scheduled: "PENDING",
    JobStatus.in_progress: "RUNNING",
    JobStatus.completed: "SUCCESS",
    JobStatus.failed: "FAILURE",
    JobStatus.cancelled: "CANCELLED",
    JobStatus.unknown: "RUNNING",  # its trainer is out of reach for now
}
PEFT = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
BATCHES_ROUTE = ("POST", "/v1/batches")


class LLMEngineService:
    """LLM Engine's routes over `impls` (the stack's guarded implementations, by API name);
    `dispatcher` is the stack, for a batch service it may serve (`/v1/batches`)."""

    def __init__(self, impls: dict[str, Any]) -> None:
        self.inference = impls["inference"]
        self.files = impls["files"]
        self.datasets = impls["datasets"]
        self.post_training = impls["post_training"]
        self.models = impls["models"]
        self.dispatcher: Dispatcher | None = None

    # -- completions -----------------------------------------------------------------------

    async def engine_completion_sync(
        self, model_endpoint_name: str, request: CompletionRequest
    ) -> CompletionSyncResponse:
        result = await self.inference.completion(_native(model_endpoint_name, request))
        assert isinstance(result, Completion)
        choice, usage = result.choices[0], result.usage
        tokens = None
        if request.return_token_log_probs and choice.logprobs is not None:
            tokens = [
                TokenOutput(token=t, log_prob=p)
                for t, p in zip(choice.logprobs.tokens, choice.logprobs.token_logprobs, strict=True)
            ]
        return CompletionSyncResponse(
            request_id=result.id,
            output=CompletionOutput(
                text=choice.text,
                num_prompt_tokens=usage.prompt_tokens if usage else None,
                num_completion_tokens=usage.completion_tokens if usage else len(tokens or []),
                tokens=tokens,
            ),
        )

    async def engine_completion_stream(
        self, model_endpoint_name: str, request: CompletionRequest
    ) -> AsyncIterator[CompletionStreamResponse]:
        native = _native(model_endpoint_name, request).model_copy(
            update={"stream": True, "stream_options": {"include_usage": True}}
        )
        chunks = await self.inference.completion(native)  # refusals before the stream: 4xx
        return _stream(chunks, bool(request.return_token_log_probs))

    # -- batch completions -----------------------------------------------------------------

    async def engine_batch_completions(
        self, request: BatchCompletionsRequest
    ) -> BatchCompletionsResponse:
        if request.input_data_path is not None or request.content is None:
            raise InvalidRequestError(
                "input_data_path: this server reads no input path; send the prompts as content",
                param="input_data_path",
            )
        content, model = request.content, request.model_config_.model
        if content.skip_special_tokens is False:
            raise InvalidRequestError(
                "content.skip_special_tokens: only true", param="content.skip_special_tokens"
            )
        body = _sampling(content.model_dump(exclude={"prompts", "skip_special_tokens"}))
        lines = [
            {
                "custom_id": f"prompt-{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": model, "prompt": prompt, **body},
            }
            for i, prompt in enumerate(content.prompts)
        ]
        jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = NativeUpload(
            file=UploadedFile(filename="llm-engine-batch.jsonl", file=io.BytesIO(jsonl)),
            purpose=FilePurpose.batch,
        )
        made = await self.files.upload_file(upload)
        try:
            job_id = await self._start_batch(made.id, request.output_data_path)
        except BaseException:
            with contextlib.suppress(NotFoundError):
                await self.files.delete_file(made.id)
            raise
        return BatchCompletionsResponse(job_id=job_id)

    async def _start_batch(self, input_file_id: str, output_data_path: str) -> str:
        """Create an OpenAI batch of `/v1/completions` requests through the stack's batch
        service, found by its route; a stack without one answers 501."""
        stack = self.dispatcher
        route = (
            next(
                (r for r in stack.routes if (r.method, r.path) == BATCHES_ROUTE and r.primary),
                None,
            )
            if stack is not None
            else None
        )
        if stack is None or route is None:
            raise NotSupportedError(
                "batch completions run as OpenAI batches (POST /v1/batches), which this "
                "server does not serve"
            )
        data = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/completions",
            "completion_window": "24h",
            "metadata": {"llm_engine_output_data_path": output_data_path},
        }
        batch = await stack.call(route)(request=build_request(route, data))
        return str(batch.id)

    # -- fine-tunes ------------------------------------------------------------------------

    async def engine_create_fine_tune(
        self, request: CreateFineTuneRequest
    ) -> CreateFineTuneResponse:
        if request.wandb_config is not None:
            raise InvalidRequestError(
                "wandb_config: not taken here; a native job's logger_config.trackers sends "
                "its metrics to W&B",
                param="wandb_config",
            )
        job_uuid = "-".join(filter(None, ["llmft", request.suffix, secrets.token_hex(6)]))
        made: list[str] = []
        try:
            train = await self._dataset_of(request.training_file, "training_file", job_uuid)
            made.append(train)
            validation = None
            if request.validation_file:
                validation = await self._dataset_of(
                    request.validation_file, "validation_file", f"{job_uuid}-validation"
                )
                made.append(validation)
            rows = (await self.datasets.get_dataset(train)).row_count
            native = _fine_tune(request, job_uuid, train, validation, rows)
            await self.post_training.supervised_fine_tune(native)
        except BaseException:
            for dataset_id in made:
                with contextlib.suppress(NotFoundError):
                    await self.datasets.unregister_dataset(dataset_id)
            raise
        return CreateFineTuneResponse(id=job_uuid)

    async def _dataset_of(self, file_id: str, field: str, dataset_id: str) -> str:
        """Register an uploaded CSV of `prompt,response` rows as an instruct dataset."""
        try:
            content = await (await self.files.retrieve_file_content(file_id)).read()
        except NotFoundError:
            raise NotFoundError(f"{field}: no file {file_id!r}", param=field) from None
        rows = _csv_rows(content, field)
        dataset = await self.datasets.register_dataset(
            RegisterDatasetRequest(
                purpose=DatasetPurpose.instruct,
                source=RowsDataSource(type="rows", rows=rows),
                dataset_id=f"{dataset_id}-train" if field == "training_file" else dataset_id,
                metadata={"llm_engine_file": file_id},
            )
        )
        return str(dataset.identifier)

    async def engine_list_fine_tunes(self) -> ListFineTunesResponse:
        jobs = (await self.post_training.list_jobs()).data
        return ListFineTunesResponse(
            jobs=[await self.engine_get_fine_tune(j.job_uuid) for j in jobs]
        )

    async def engine_get_fine_tune(self, fine_tune_id: str) -> FineTune:
        status = await self._status(fine_tune_id)
        done = status.status == JobStatus.completed
        return FineTune(
            id=status.job_uuid,
            fine_tuned_model=status.fine_tuned_model or (f"ft/{status.job_uuid}" if done else None),
            status=STATUS[status.status],
        )

    async def engine_cancel_fine_tune(self, fine_tune_id: str) -> CancelFineTuneResponse:
        await self._status(fine_tune_id)
        try:
            await self.post_training.cancel_job(fine_tune_id)
        except ConflictError:  # it had ended already
            return CancelFineTuneResponse(success=False)
        return CancelFineTuneResponse(success=True)

    async def engine_fine_tune_events(self, fine_tune_id: str) -> FineTuneEventsResponse:
        await self._status(fine_tune_id)
        events = await self.post_training.list_fine_tuning_events(
            fine_tune_id, PageRequest(limit=100)
        )
        return FineTuneEventsResponse(
            events=[
                FineTuneEvent(timestamp=e.created_at, message=e.message, level=e.level)
                for e in reversed(events.data)
            ]
        )

    async def _status(self, fine_tune_id: str) -> PostTrainingJobStatusResponse:
        try:
            status: PostTrainingJobStatusResponse = await self.post_training.get_job_status(
                fine_tune_id
            )
        except NotFoundError:
            raise NotFoundError(f"no fine-tune {fine_tune_id!r}", param="fine_tune_id") from None
        return status

    # -- files -----------------------------------------------------------------------------

    async def engine_upload_file(self, request: UploadFileRequest) -> UploadFileResponse:
        made = await self.files.upload_file(
            NativeUpload(file=request.file, purpose=FilePurpose.fine_tune)
        )
        return UploadFileResponse(id=made.id)

    async def engine_list_files(self) -> ListFilesResponse:
        from llama_post.apis.files import ListFilesRequest

        found = (await self.files.list_files(ListFilesRequest(order="asc"))).data
        return ListFilesResponse(
            files=[EngineFile(id=f.id, filename=f.filename, size=f.bytes) for f in found]
        )

    async def engine_get_file(self, file_id: str) -> EngineFile:
        found = await self.files.retrieve_file(file_id)
        return EngineFile(id=found.id, filename=found.filename, size=found.bytes)

    async def engine_delete_file(self, file_id: str) -> DeleteResponse:
        return DeleteResponse(deleted=(await self.files.delete_file(file_id)).deleted)

    async def engine_file_content(self, file_id: str) -> FileContentResponse:
        content = await (await self.files.retrieve_file_content(file_id)).read()
        # its answer is a string: bytes that are not UTF-8 read as U+FFFD (the native route
        # GET /v1/files/{file_id}/content has them as they are)
        return FileContentResponse(id=file_id, content=content.decode(errors="replace"))

    # -- model endpoints -------------------------------------------------------------------

    async def engine_list_model_endpoints(self) -> ListModelEndpointsResponse:
        models = (await self.models.list_models()).data
        return ListModelEndpointsResponse(model_endpoints=[_endpoint(m) for m in models])

    async def engine_get_model_endpoint(self, model_endpoint_name: str) -> ModelEndpoint:
        return _endpoint(await self.models.get_model(model_endpoint_name))

    async def engine_delete_model_endpoint(self, model_endpoint_name: str) -> DeleteResponse:
        return DeleteResponse(
            deleted=(await self.models.unregister_model(model_endpoint_name)).deleted
        )

    async def engine_download_model(self, request: ModelDownloadRequest) -> ModelDownloadResponse:
        model: Model = await self.models.get_model(request.model_name)
        job, checkpoint = model.metadata.get("job_uuid"), model.metadata.get("checkpoint")
        merged = model.metadata.get("export_id")
        if isinstance(merged, str):  # an adapter merged into its base: the whole model
            made = await self.post_training.export_download_url(merged)
            return ModelDownloadResponse(urls={f"{merged}.tar.gz": made.url})
        if not isinstance(job, str) or not isinstance(checkpoint, str):
            raise NotFoundError(  # as for a name that serves nothing: the spec cannot tell
                f"model_name: no fine-tuned or merged model {model.id!r}; only those (ft/<job>, "
                "a merge's) can be downloaded",
                param="model_name",
            )
        archive = await self.post_training.checkpoint_archive_url(job, checkpoint)
        return ModelDownloadResponse(urls={f"{job}-{checkpoint}.tar.gz": archive.url})


# -- translation -------------------------------------------------------------------------------


def _sampling(fields: dict[str, Any]) -> dict[str, Any]:
    """LLM Engine's sampling fields as the native (OpenAI-shaped) ones."""
    top_k = fields.get("top_k")
    native = {
        "max_tokens": fields["max_new_tokens"],
        "temperature": fields["temperature"],
        "stop": fields.get("stop_sequences") or None,
        "top_p": fields.get("top_p"),
        "top_k": top_k if top_k is not None and top_k > 0 else None,
        "presence_penalty": fields.get("presence_penalty") or 0.0,
        "frequency_penalty": fields.get("frequency_penalty") or 0.0,
        "logprobs": 0 if fields.get("return_token_log_probs") else None,
    }
    return {k: v for k, v in native.items() if v is not None}


def _native(model: str, request: CompletionRequest) -> NativeCompletion:
    for name, only in (("include_stop_str_in_output", False), ("skip_special_tokens", True)):
        value = getattr(request, name)
        if value is not None and value != only:
            raise InvalidRequestError(f"{name}: only {str(only).lower()} here", param=name)
    guided = {
        "json": request.guided_json,
        "regex": request.guided_regex,
        "choice": request.guided_choice,
        "grammar": request.guided_grammar,
    }
    given = {k: v for k, v in guided.items() if v is not None}
    if len(given) > 1:
        names = ", ".join(f"guided_{k}" for k in given)
        raise InvalidRequestError(
            f"{names}: give one guided field", param=f"guided_{next(iter(given))}"
        )
    data = {"model": model, "prompt": request.prompt, **_sampling(request.model_dump())}
    if given:
        data["structured_outputs"] = given
    try:
        return NativeCompletion.model_validate(data)
    except ValidationError as exc:  # what LLM Engine's ranges allow and the native ones do not
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(f"{field}: {first['msg']}", param=field) from None


async def _stream(
    chunks: AsyncIterator[Completion], logprobs: bool
) -> AsyncIterator[CompletionStreamResponse]:
    """The native chunks as LLM Engine's events: one per chunk with text, the last `finished`
    with the token counts; an error after the start is an event with `error`."""
    request_id, held, count, prompt_tokens = str(uuid.uuid4()), None, 0, None
    try:
        async for chunk in chunks:
            request_id = chunk.id
            if chunk.usage is not None:
                prompt_tokens, count = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            for choice in chunk.choices:
                if held is not None:
                    yield held
                token = None
                if logprobs and choice.logprobs is not None and choice.logprobs.tokens:
                    token = TokenOutput(
                        token="".join(choice.logprobs.tokens),
                        log_prob=math.fsum(
                            p for p in choice.logprobs.token_logprobs if p is not None
                        ),
                    )
                count += len(choice.logprobs.tokens) if choice.logprobs else 1
                held = CompletionStreamResponse(
                    request_id=request_id,
                    output=CompletionStreamOutput(
                        text=choice.text, finished=False, num_completion_tokens=count, token=token
                    ),
                )
    except LlamaPostError as exc:
        if held is not None:
            yield held
        yield CompletionStreamResponse(
            request_id=request_id,
            error=StreamError(
                status_code=exc.status,
                content=StreamErrorContent(
                    error=exc.message, timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                ),
            ),
        )
        return
    if held is not None and held.output is not None:
        final = held.output.model_copy(
            update={
                "finished": True,
                "num_prompt_tokens": prompt_tokens,
                "num_completion_tokens": count,
            }
        )
        yield held.model_copy(update={"output": final})


def _csv_rows(content: bytes, field: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline=""))
        header = reader.fieldnames or []
        if not {"prompt", "response"} <= set(header):
            raise InvalidRequestError(
                f"{field}: a CSV with the columns prompt and response is needed; its header is "
                f"{', '.join(header) or 'empty'}",
                param=field,
            )
        rows = [{"prompt": r["prompt"], "completion": r["response"]} for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequestError(f"{field}: not a readable CSV: {exc}", param=field) from None
    bad = [i for i, r in enumerate(rows, start=1) if not r["prompt"] or r["completion"] is None]
    if not rows or bad:
        where = f"row {bad[0]} has no prompt or response" if bad else "it has no rows"
        raise InvalidRequestError(f"{field}: {where}", param=field)
    return rows


def _fine_tune(
    request: CreateFineTuneRequest,
    job_uuid: str,
    train: str,
    validation: str | None,
    rows: int,
) -> SupervisedFineTuneRequest:
    """The native LoRA job: LLM Engine's hyperparameters mapped, any other refused by name."""
    given = dict(request.hyperparameters or {})
    for name in given:
        if name not in HYPERPARAMETERS:
            raise InvalidRequestError(
                f"hyperparameters.{name}: not taken here (known: {', '.join(HYPERPARAMETERS)})",
                param=f"hyperparameters.{name}",
            )
    epochs = _number(given, "epochs", int) or 1
    optimizer: dict[str, Any] = {"lr": _number(given, "lr", float) or 2e-4}
    if "weight_decay" in given:
        optimizer["weight_decay"] = _number(given, "weight_decay", float)
    steps = max(1, math.ceil(rows / AUTO_BATCH_SIZE)) * epochs
    if "warmup_ratio" in given:
        ratio = _number(given, "warmup_ratio", float) or 0.0
        if not 0.0 <= ratio <= 1.0:
            raise InvalidRequestError(
                "hyperparameters.warmup_ratio: between 0 and 1",
                param="hyperparameters.warmup_ratio",
            )
        optimizer["num_warmup_steps"] = round(ratio * steps)
    data = {
        "dataset_id": train,
        "batch_size": AUTO_BATCH_SIZE,
        "data_format": "instruct",
        "validation_dataset_id": validation,
    }
    native = {
        "job_uuid": job_uuid,
        "model": request.model,
        "training_config": {
            "n_epochs": epochs,
            "data_config": data,
            "optimizer_config": optimizer,
        },
        "algorithm_config": {"type": "LoRA", **_peft(given.get("peft_config"))},
        "metadata": {"llm_engine_training_file": request.training_file},
    }
    try:
        return SupervisedFineTuneRequest.model_validate(native)
    except ValueError as exc:
        raise InvalidRequestError(f"hyperparameters: {exc}", param="hyperparameters") from None


def _number(given: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = given.get(name)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"hyperparameters.{name}: a number is needed, not {value!r}",
            param=f"hyperparameters.{name}",
        ) from None
    if number < 0 or (name in ("epochs", "lr") and number <= 0):
        raise InvalidRequestError(
            f"hyperparameters.{name}: {value} is out of range", param=f"hyperparameters.{name}"
        )
    return number


def _peft(config: Any) -> dict[str, Any]:
    """`peft_config` (peft's LoraConfig names) as the native LoRA config's."""
    if config is None:
        return {}
    if isinstance(config, str):
        with contextlib.suppress(json.JSONDecodeError):
            config = json.loads(config)
    if not isinstance(config, dict):
        raise InvalidRequestError(
            "hyperparameters.peft_config: an object is needed", param="hyperparameters.peft_config"
        )
    lora: dict[str, Any] = {}
    for name, value in config.items():
        if name in PEFT:
            lora[PEFT[name]] = value
        elif name == "target_modules":
            lora["lora_attn_modules"] = value
        else:
            known = ", ".join([*PEFT, "target_modules"])
            raise InvalidRequestError(
                f"hyperparameters.peft_config.{name}: not taken here (known: {known})",
                param=f"hyperparameters.peft_config.{name}",
            )
    return lora


def _endpoint(model: Model) -> ModelEndpoint:
    return ModelEndpoint(
        id=model.id,
        name=model.id,
        model_name=model.base_model or model.id,
        inference_framework_tag=model.provider_id,
    )

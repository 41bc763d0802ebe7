"""Requests and responses of inference, in the shape of OpenAI's chat and completions APIs.

Sampling knobs beyond OpenAI's (`top_k`, `repetition_penalty`, `structured_outputs`) are the ones
vLLM accepts. A key these models do not declare (`tools`, `logit_bias`, ...) is refused by name.
Every knob's range gives a distribution to sample from, so one request cannot make the batch it is
decoded in compute NaN: NaN and infinities are out of every range, a temperature too small to
divide by decodes greedily (as vLLM's), a repetition penalty stays within a factor of 10 either
way, and a seed fits the 64 bits a generator takes (vLLM's bounds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from llama_post.schema import StrictModel


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(StrictModel):
    include_usage: bool = False


Text = Annotated[str, Field(min_length=1)]
MODEL_DEFAULT = "Unset: the model's `sampling_defaults` (GET /v1/models), else {}."


class JsonSchemaFormat(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, JsonValue] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constrains(self) -> bool:
        return self.type != "text"


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs`: give one of them."""

    choice: list[str] | None = Field(None, min_length=1)
    regex: str | None = None
    json_: dict[str, JsonValue] | None = Field(None, alias="json")
    grammar: str | None = None


class SamplingFields(StrictModel):
    """The knobs shared by chat and completions."""

    model_config = ConfigDict(allow_inf_nan=False)  # JSON's NaN and Infinity: "a finite number"

    model: str
    max_tokens: int | None = Field(None, ge=1, description="Defaults to what fits the context.")
    temperature: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description=f"0 (or under 1e-5, as vLLM) decodes greedily. {MODEL_DEFAULT.format(1)}",
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0, description=MODEL_DEFAULT.format(1))
    top_k: int | None = Field(None, ge=1, description=MODEL_DEFAULT.format("none"))
    stop: Text | Annotated[list[Text], Field(max_length=16)] | None = Field(
        None, description="Up to 16 stop sequences."
    )
    seed: int | None = Field(
        None, ge=-(2**63), le=2**63 - 1, description="The same seed gives the same output."
    )
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(
        None, ge=0.1, le=10.0, description=MODEL_DEFAULT.format(1)
    )
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is generated.")
    ignore_eos: bool = Field(False, description="Generate past end-of-sequence (as vLLM's).")
    response_format: ResponseFormat | None = Field(
        None, description="Constrain the output (OpenAI's); where the provider can."
    )
    structured_outputs: StructuredOutputs | None = Field(
        None, description="Constrain the output (vLLM's); where the provider can."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(
        description="A text, several, one prompt as token ids, or several (as OpenAI's and vLLM's)."
    )
    max_tokens: int | None = Field(
        None,
        ge=0,
        description="Defaults to what fits the context. 0 (with `echo`) scores the prompt only.",
    )
    logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token.")
    echo: bool = Field(
        False,
        description="Give the prompt back before the completion; with `logprobs`, its tokens' "
        "logprobs too, the first null (OpenAI's legacy completions, vLLM's).",
    )
    return_token_ids: bool = Field(False, description="Each choice's `token_ids` (as vLLM's).")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, max_length=64, description="Tokens that end the output, kept in it (as vLLM's)."
    )
    prompt_logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Each prompt token's log-probability, with this many alternatives (as "
        "vLLM's): a choice's `prompt_logprobs`, keyed by token id. Not with `stream`.",
    )
    return_tokens_as_token_ids: bool = Field(
        False, description="`logprobs` names tokens as `token_id:<id>` (as vLLM's)."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape. With `echo`, the prompt's first token has no logprob (null)."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = Field(
        None, description="1: the likeliest token there (an upstream may leave it out)."
    )
    decoded_token: str | None = Field(
        None, description="The token's text (null where the upstream does not detokenize)."
    )


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None
    token_ids: list[int] | None = Field(None, description="With `return_token_ids`.")
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        None,
        description="With `prompt_logprobs`: at each prompt position (none at the first), the "
        "prompt's token and the likeliest others, by token id.",
    )


class Completion(BaseModel):
    """A completion, or (streamed) one chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class BatchCompletionRequest(SamplingFields):
    prompts: list[Text] = Field(min_length=1, max_length=256)
    logprobs: int | None = Field(None, ge=0, le=20)


class BatchCompletionResponse(BaseModel):
    data: list[Completion]


class BatchChatCompletionRequest(SamplingFields):
    messages_batch: list[Annotated[list[ChatMessage], Field(min_length=1)]] = Field(
        min_length=1, max_length=256
    )
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class BatchChatCompletionResponse(BaseModel):
    data: list[ChatCompletion]

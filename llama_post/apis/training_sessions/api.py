from __future__ import annotations

from typing import Protocol

from llama_post.apis.training_sessions.models import (
    CreateSessionRequest,
    CreateTrainingModelRequest,
    FinishSessionRequest,
    ForwardBackwardRequest,
    ForwardBackwardResult,
    LoadStateRequest,
    OptimStepRequest,
    OptimStepResult,
    SavedState,
    SavedStateList,
    SaveStateRequest,
    SessionId,
    StateKindName,
    StateName,
    TrainingModel,
    TrainingModelId,
    TrainingSession,
    TrainingSessionList,
)
from llama_post.apis.training_sessions.tinker import (
    TinkerCreateModel,
    TinkerCreateSamplingSession,
    TinkerCreateSession,
    TinkerFinished,
    TinkerFinishSession,
    TinkerForwardBackward,
    TinkerFuture,
    TinkerHeartbeat,
    TinkerInfo,
    TinkerLoadWeights,
    TinkerModelRef,
    TinkerOptimStep,
    TinkerRetrieveFuture,
    TinkerSample,
    TinkerSampler,
    TinkerSamplingSession,
    TinkerSaveForSampler,
    TinkerSaveWeights,
    TinkerSessionCreated,
    TinkerSessionRef,
)
from llama_post.schema import TINKER, FileContent, creates, webmethod


class InteractiveTraining(Protocol):
    """Interactive training: the caller runs the loop, the server holds the model.

    A session holds training models, each a base with a LoRA adapter and an AdamW optimizer in
    a worker process of its own. Calls on one model run one at a time, in the order they
    arrive; a worker that dies fails the next call with a clear error.

    What a provider implements; the stack serves `TrainingSessions` over it."""

    @creates(session_id="/session_id")
    @webmethod(route="/v1/training-sessions", method="POST")
    async def create_session(self, request: CreateSessionRequest) -> TrainingSession:
        """Open a session."""
        ...

    @webmethod(route="/v1/training-sessions", method="GET")
    async def list_sessions(self) -> TrainingSessionList:
        """The sessions of this run of the server (the caller's)."""
        ...

    @webmethod(route="/v1/training-sessions/{session_id}", method="GET")
    async def get_session(self, session_id: SessionId) -> TrainingSession:
        """A session, its models and when it was last heard from."""
        ...

    @webmethod(route="/v1/training-sessions/{session_id}/heartbeat", method="POST")
    async def heartbeat_session(self, session_id: SessionId) -> TrainingSession:
        """Keep a session alive.

        One not heard from for the provider's `session_timeout_seconds` is finished (its
        workers stopped, its saved states kept)."""
        ...

    @webmethod(route="/v1/training-sessions/{session_id}/finish", method="POST")
    async def finish_session(
        self, session_id: SessionId, request: FinishSessionRequest
    ) -> TrainingSession:
        """Stop a session's workers; its saved states are kept."""
        ...

    @webmethod(route="/v1/training-sessions/{session_id}/models", method="POST")
    async def create_training_model(
        self, session_id: SessionId, request: CreateTrainingModelRequest
    ) -> TrainingModel:
        """Start a training model: a fresh LoRA over a base model, or a saved state.

        With `with_optimizer`, the state's optimizer too. Answers once its worker has loaded it."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}", method="GET")
    async def get_training_model(self, training_model_id: TrainingModelId) -> TrainingModel:
        """A training model: its base, adapter settings, steps taken, status."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/forward-backward", method="POST")
    async def forward_backward(
        self, training_model_id: TrainingModelId, request: ForwardBackwardRequest
    ) -> ForwardBackwardResult:
        """The loss of a batch, and its gradients added to those accumulated.

        `forward_only`: the loss alone. Losses are sums over tokens: `cross_entropy`
        -sum(weight * logp), `importance_sampling` -sum(exp(logp - sampler_logp) * advantage),
        `ppo` the same ratio clipped to [clip_low_threshold, clip_high_threshold] (0.8, 1.2)
        with the pessimistic minimum."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/optim-step", method="POST")
    async def optim_step(
        self, training_model_id: TrainingModelId, request: OptimStepRequest
    ) -> OptimStepResult:
        """One AdamW step with the accumulated gradients, which are then cleared.

        The gradients are clipped to `grad_clip_norm` first; the step's settings are the
        request's."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/states", method="POST")
    async def save_state(
        self, training_model_id: TrainingModelId, request: SaveStateRequest
    ) -> SavedState:
        """Save the adapter as a PEFT folder (`state`: with the optimizer, to resume from)."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/load", method="POST")
    async def load_state(
        self, training_model_id: TrainingModelId, request: LoadStateRequest
    ) -> TrainingModel:
        """Load a saved state's adapter (and optimizer) into a training model."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/states", method="GET")
    async def list_model_states(self, training_model_id: TrainingModelId) -> SavedStateList:
        """A training model's saved states, oldest first, also once its session has ended."""
        ...

    @webmethod(route="/v1/training-states", method="GET")
    async def list_states(self) -> SavedStateList:
        """The caller's saved states, of all their sessions, newest first."""
        ...

    @webmethod(route="/v1/training-models/{training_model_id}/states/{kind}/{name}", method="GET")
    async def get_state(
        self, training_model_id: TrainingModelId, kind: StateKindName, name: StateName
    ) -> SavedState:
        """A saved state, also once its session has ended or the server has restarted."""
        ...


class TrainingSessions(InteractiveTraining, Protocol):
    """The native calls, and Tinker's over them (the tinker SDK's ServiceClient): served by the
    stack's `TinkerSessions` over whatever provider serves `InteractiveTraining`."""

    @creates(session_id="/session_id")
    @webmethod(route="/api/v1/create_session", method="POST", compat=TINKER)
    async def tinker_create_session(self, request: TinkerCreateSession) -> TinkerSessionCreated:
        """Open a session."""
        ...

    @webmethod(route="/api/v1/session_heartbeat", method="POST", compat=TINKER)
    async def tinker_session_heartbeat(self, request: TinkerSessionRef) -> TinkerHeartbeat:
        """Keep a session alive."""
        ...

    @webmethod(route="/api/v1/sessions/{session_id}/finish", method="POST", compat=TINKER)
    async def tinker_finish_session(
        self, session_id: SessionId, request: TinkerFinishSession
    ) -> TinkerFinished:
        """End a session (the SDK's `close()`)."""
        ...

    @webmethod(route="/api/v1/create_model", method="POST", compat=TINKER)
    async def tinker_create_model(self, request: TinkerCreateModel) -> TinkerFuture:
        """A LoRA training model; the future's result is `{model_id}`."""
        ...

    @webmethod(route="/api/v1/get_info", method="POST", compat=TINKER)
    async def tinker_get_info(self, request: TinkerModelRef) -> TinkerInfo:
        """A training model's base and tokenizer (a folder the client can load)."""
        ...

    @webmethod(route="/api/v1/forward_backward", method="POST", compat=TINKER)
    async def tinker_forward_backward(self, request: TinkerForwardBackward) -> TinkerFuture:
        """Forward (and backward) a batch: protobuf in, protobuf out (`retrieve_future`)."""
        ...

    @webmethod(route="/api/v1/optim_step", method="POST", compat=TINKER)
    async def tinker_optim_step(self, request: TinkerOptimStep) -> TinkerFuture:
        """An AdamW step with `adam_params`."""
        ...

    @webmethod(route="/api/v1/save_weights", method="POST", compat=TINKER)
    async def tinker_save_weights(self, request: TinkerSaveWeights) -> TinkerFuture:
        """Save the adapter and the optimizer: `tinker://<model>/weights/<name>`."""
        ...

    @webmethod(route="/api/v1/save_weights_for_sampler", method="POST", compat=TINKER)
    async def tinker_save_weights_for_sampler(self, request: TinkerSaveForSampler) -> TinkerFuture:
        """Save the adapter to sample from: `tinker://<model>/sampler_weights/<name>`.

        Without `path`, the future's result is a sampling session over it."""
        ...

    @webmethod(route="/api/v1/load_weights", method="POST", compat=TINKER)
    async def tinker_load_weights(self, request: TinkerLoadWeights) -> TinkerFuture:
        """A training model from saved weights (with `optimizer`: and its optimizer)."""
        ...

    @webmethod(route="/api/v1/retrieve_future", method="POST", compat=TINKER)
    async def tinker_retrieve_future(self, request: TinkerRetrieveFuture) -> FileContent:
        """A future's result, held open up to 30 s while it runs.

        JSON, or protobuf for forward/backward and samples (as the SDK reads them); still
        running: `{"type": "try_again"}`; failed: `{"error", "category"}`."""
        ...

    @webmethod(route="/api/v1/create_sampling_session", method="POST", compat=TINKER)
    async def tinker_create_sampling_session(
        self, request: TinkerCreateSamplingSession
    ) -> TinkerSamplingSession:
        """Sample from saved sampler weights (served by inference as an adapter) or a base."""
        ...

    @webmethod(route="/api/v1/samplers/{sampler_id}", method="GET", compat=TINKER)
    async def tinker_get_sampler(self, sampler_id: str) -> TinkerSampler:
        """A sampling session's base model and weights."""
        ...

    @webmethod(route="/api/v1/asample", method="POST", compat=TINKER)
    async def tinker_sample(self, request: TinkerSample) -> TinkerFuture:
        """Sample `num_samples` continuations of a token prompt; the result is protobuf."""
        ...

"""The tinker SDK's training and sampling clients, unchanged, against llama-post: run in the
pinned SDK's own environment (`pins/tinker-0.38.txt`). Arguments: the server's URL, the
owner's key, another owner's key, the base model. Its last line is a JSON report, which the
test compares with transformers' own numbers."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import tinker
from tinker import types

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
]
ADAM = types.AdamParams(learning_rate=2e-2, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip_norm=1.0)


def datum(tokens: list[int], weights: list[float]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


def loss(client: Any, data: list[types.Datum]) -> float:
    return float(client.forward(data, "cross_entropy").result().metrics["loss:sum"])


def step(client: Any, *batches: list[types.Datum]) -> float:
    """One optimizer step over the gradients of every batch (accumulated), and the loss before."""
    results = [client.forward_backward(b, "cross_entropy") for b in batches]
    total = sum(r.result().metrics["loss:sum"] for r in results)
    client.optim_step(ADAM).result()
    return float(total)


def refused(call: Any) -> str:
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("another owner's call went through")


def main(url: str, key: str, other_key: str, base_model: str) -> dict[str, Any]:
    service = tinker.ServiceClient(base_url=url, api_key=key)
    client = service.create_lora_training_client(base_model=base_model, rank=4, seed=3).result()
    info = client.get_info()
    tokenizer = client.get_tokenizer()  # from the folder get_info names: no hub
    rows = [tokenizer.encode(t) for t in TEXTS]
    weights = [[0.0] * 3 + [1.0] * (len(r) - 3) for r in rows]
    data = [datum(r, w) for r, w in zip(rows, weights, strict=True)]

    first = client.forward(data, "cross_entropy").result()
    losses = [step(client, data) for _ in range(3)]
    state = client.save_state("mid").result().path
    # the uninterrupted client, and one made from the saved state with its optimizer
    resumed = service.create_training_client_from_state_with_optimizer(state).result()
    going_on = [step(client, data), loss(client, data)]
    after = [step(resumed, data), loss(resumed, data)]
    # one more step each: the resumed client's gradients accumulated over two calls
    step(client, data)
    step(resumed, data[:1], data[1:])
    accumulated = [loss(client, data), loss(resumed, data)]

    # the RL losses, on the model's own log-probabilities as the sampler's: the ratio is 1
    now = client.forward(data, "cross_entropy").result()
    lp = [o["logprobs"].tolist() for o in now.loss_fn_outputs]
    rl = {}
    for name in ("importance_sampling", "ppo"):
        rl_data = [
            types.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "logprobs": lp[i],
                    "advantages": [1.0] * len(lp[i]),
                },
            )
            for i, d in enumerate(data)
        ]
        out = client.forward(rl_data, name).result()
        rl[name] = out.metrics["loss:sum"]
    unknown = refused(lambda: client.forward(data, "dro").result())

    sampler_path = client.save_weights_for_sampler("s1").result().path
    sampler = service.create_sampling_client(model_path=sampler_path).result()
    prompt = types.ModelInput.from_ints(rows[0][:5])
    params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=7)
    sampled = sampler.sample(prompt, num_samples=2, sampling_params=params).result()
    # the prompt's log-probabilities, and the top 3 at each prompt and sampled position
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(rows[1])).result()
    greedy_top = types.SamplingParams(max_tokens=2, temperature=0.0, stop=[])
    topped = sampler.sample(
        prompt,
        num_samples=1,
        sampling_params=greedy_top,
        include_prompt_logprobs=True,
        topk_prompt_logprobs=3,
        topk_sample_logprobs=3,
    ).result()
    quick = client.save_weights_and_get_sampling_client().result()  # as RL loops do
    greedy = types.SamplingParams(max_tokens=4, temperature=0.0, stop=[])
    quickly = quick.sample(prompt, num_samples=1, sampling_params=greedy).result()

    # the saved states are the model's checkpoints, to the RestClient too
    rest, other = rest_client(service), tinker.ServiceClient(base_url=url, api_key=other_key)
    listed = [c.tinker_path for c in rest.list_checkpoints(info.model_id).result().checkpoints]
    mine = [c.tinker_path for c in rest.list_user_checkpoints().result().checkpoints]
    other_rest = rest_client(other)
    theirs_listed = other_rest.list_user_checkpoints().result().checkpoints
    theirs = {
        "state": refused(lambda: other.create_training_client_from_state(state).result()),
        "sampler": refused(lambda: other.create_sampling_client(model_path=sampler_path).result()),
        "checkpoints": refused(lambda: other_rest.list_checkpoints(info.model_id).result()),
    }
    service.close("success", detail="the flow is done").result()
    return {
        "tinker": tinker.__version__,
        "model_id": info.model_id,
        "tokenizer_id": info.model_data.tokenizer_id,
        "lora_rank": info.lora_rank,
        "rows": rows,
        "weights": weights,
        "first_loss": first.metrics["loss:sum"],
        "first_logprobs": [o["logprobs"].tolist() for o in first.loss_fn_outputs],
        "losses": losses,
        "going_on": going_on,
        "after": after,
        "accumulated": accumulated,
        "rl": rl,
        "unknown_loss": unknown,
        "samples": [
            {
                "tokens": [int(t) for t in s.tokens],
                "logprobs": [float(x) for x in s.logprobs or []],
                "stop": s.stop_reason,
            }
            for s in sampled.sequences
        ],
        "quick": [int(t) for t in quickly.sequences[0].tokens],
        "scored": scored,
        "topped": {
            "prompt": topped.prompt_logprobs,
            "prompt_topk": topped.topk_prompt_logprobs,
            "tokens": [int(t) for t in topped.sequences[0].tokens],
            "logprobs": topped.sequences[0].logprobs,
            "topk": topped.sequences[0].topk_logprobs,
        },
        "refused": theirs,
        "state": state,
        "sampler_path": sampler_path,
        "listed": listed,
        "mine": mine,
        "theirs_listed": [c.tinker_path for c in theirs_listed],
    }


def rest_client(service: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # create_rest_client is deprecated
        return service.create_rest_client()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))

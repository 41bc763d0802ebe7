"""The worker of one training model (started by `providers/jobs/sessions.py`): a base model
with a LoRA adapter and AdamW, driven one command at a time: a JSON line in on stdin, a JSON
line out on the stdout it was started with (whatever else prints goes to its log).

Losses are sums over tokens, so gradients of several `forward_backward` calls add up exactly
as one call over all their data would; `optim_step` applies and clears them.

A thread writes the job machinery's heartbeat (`providers/jobs/folder.py`) every second, naming
the command running (or `idle`), to the file named on the command line: a worker that stops
beating (stopped, or wedged holding the interpreter) is killed by the server's watchdog."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch

from providers.inline.post_training.peft.training import decoder_states, head_logps
from providers.jobs.folder import Heartbeat
from providers.training.data import first_fit

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


class UserError(Exception):
    """The command's own fault (a token out of the vocabulary): answered as the caller's."""


class TrainingModel:
    def __init__(self, command: dict[str, Any]) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        if command.get("threads"):
            torch.set_num_threads(int(command["threads"]))
        lora = command["lora"]
        self.device = command["device"]
        base: Any = AutoModelForCausalLM.from_pretrained(command["base"], dtype=torch.float32)
        self.vocab = int(base.config.vocab_size)
        targets = (ATTN if lora["train_attn"] else []) + (MLP if lora["train_mlp"] else [])
        targets += ["lm_head"] if lora["train_unembed"] else []
        torch.manual_seed(lora["seed"] if lora["seed"] is not None else 0)
        config = LoraConfig(
            r=lora["rank"], lora_alpha=lora["alpha"], target_modules=targets, task_type="CAUSAL_LM"
        )
        self.model: Any = get_peft_model(base, config).to(self.device)
        self.model.eval()  # no dropout anywhere: a forward is a function of the weights
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12)
        self.steps = 0

    def init(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"trainable": sum(p.numel() for p in self.params)}

    def forward_backward(self, command: dict[str, Any]) -> dict[str, Any]:
        data, loss = command["data"], command["loss"]
        lengths = [len(d["input_tokens"]) for d in data]
        for i, datum in enumerate(data):
            for field in ("input_tokens", "target_tokens"):
                too_big = [t for t in datum[field] if t >= self.vocab]
                if too_big:
                    raise UserError(
                        f"data[{i}].{field}: token {too_big[0]} is not in the model's "
                        f"vocabulary of {self.vocab}"
                    )
        ids, targets, positions, index = _packed(data, lengths)
        ids, targets, positions = (t.to(self.device) for t in (ids, targets, positions))
        index = index.to(self.device)
        with torch.set_grad_enabled(not command["forward_only"]):
            # rows packed as the native trainer packs them; position_ids restarting at each
            # datum make transformers' mask block-diagonal: no token sees another datum's
            hidden = decoder_states(self.model, {"input_ids": ids, "position_ids": positions})
            states = hidden.reshape(-1, hidden.shape[-1])[index]
            labels = targets.reshape(-1)[index]
            live = None if command["forward_only"] else _live(loss, data, self.device)
            logps = _logps(self.model, states, labels, live)
            elementwise = _loss(loss, logps, data, command.get("config") or {}, self.device)
            total = elementwise.sum()
            if total.requires_grad:  # not where every weight is 0: nothing to add then
                torch.autograd.backward(total)
        logps_out = torch.split(logps.detach().cpu(), lengths)
        losses_out = torch.split(elementwise.detach().cpu(), lengths)
        outputs = [
            {"logprobs": lp.tolist(), "elementwise_loss": el.tolist()}
            for lp, el in zip(logps_out, losses_out, strict=True)
        ]
        return {"outputs": outputs, "loss": float(total.item())}

    def optim_step(self, command: dict[str, Any]) -> dict[str, Any]:
        adam = command["adam"]
        for group in self.optimizer.param_groups:
            group.update(
                lr=adam["learning_rate"],
                betas=(adam["beta1"], adam["beta2"]),
                eps=adam["eps"],
                weight_decay=adam["weight_decay"],
            )
        clip = adam["grad_clip_norm"] if adam["grad_clip_norm"] > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"step": self.steps, "grad_norm": float(norm)}

    def save(self, command: dict[str, Any]) -> dict[str, Any]:
        """A PEFT folder (and the optimizer's state), written aside and renamed into place."""
        folder = Path(command["folder"])
        staging = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging)
        if command["optimizer"]:
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "training_state.json").write_text(json.dumps({"steps": self.steps}))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        return {}

    def load(self, command: dict[str, Any]) -> dict[str, Any]:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(command["folder"])
        weights = load_file(str(folder / "adapter_model.safetensors"), device=self.device)
        set_peft_model_state_dict(self.model, weights)
        if command["optimizer"]:
            state = torch.load(folder / "optimizer.pt", map_location=self.device)
            self.optimizer.load_state_dict(state)
            self.steps = json.loads((folder / "training_state.json").read_text())["steps"]
        return {"steps": self.steps}


def _packed(
    data: list[dict[str, Any]], lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data in as few rows as fit the longest (first fit, longest first: `first_fit`, as
    the native trainer packs a batch): input ids, targets and positions (restarting at each
    datum; padding continues its row's last), and where each datum's tokens lie in the rows
    flattened, datum after datum."""
    width = max(lengths)
    rows = first_fit(list(range(len(data))), lambda i: lengths[i], width)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    starts = [0] * len(data)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at : at + n] = torch.tensor(data[i]["input_tokens"])
            targets[r, at : at + n] = torch.tensor(data[i]["target_tokens"])
            positions[r, at : at + n] = torch.arange(n)
            starts[i] = r * width + at
            at += n
        positions[r, at:] = torch.arange(n, n + width - at)
    index = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in range(len(data))])
    return ids, targets, positions, index


def _live(name: str, data: list[dict[str, Any]], device: str) -> torch.Tensor:
    """The positions whose loss has a gradient: a weight (cross_entropy) or an advantage
    (importance_sampling, ppo) other than 0; the others' losses are 0 whatever their logprob."""
    field = "weights" if name == "cross_entropy" else "advantages"
    values = [v for d in data for v in d[field]]
    return torch.tensor(values, dtype=torch.float32, device=device) != 0


def _logps(
    model: Any, states: torch.Tensor, labels: torch.Tensor, live: torch.Tensor | None
) -> torch.Tensor:
    """Each position's logprob; the output head's backward runs only where `live` (a prompt's
    positions, weighted 0, are scored without one)."""
    if live is None or bool(live.all()):
        return head_logps(model, states, labels)
    alive, dead = live.nonzero().squeeze(1), (~live).nonzero().squeeze(1)
    with torch.no_grad():
        scored = head_logps(model, states[dead].detach(), labels[dead])
    trained = head_logps(model, states[alive], labels[alive])
    order = torch.cat([alive, dead])
    values = torch.cat([trained, scored])
    return torch.empty_like(values).scatter(0, order, values)


def _loss(
    name: str,
    logps: torch.Tensor,
    data: list[dict[str, Any]],
    config: dict[str, float],
    device: str,
) -> torch.Tensor:
    """Each token's loss, in the order of `logps` (datum after datum)."""

    def column(field: str) -> torch.Tensor:
        values = [v for d in data for v in d[field]]
        return torch.tensor(values, dtype=torch.float32, device=device)

    if name == "cross_entropy":
        return -logps * column("weights")
    ratio = torch.exp(logps - column("logprobs"))
    advantages = column("advantages")
    if name == "importance_sampling":
        return -ratio * advantages
    low, high = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
    clipped = ratio.clamp(low, high)
    return -torch.minimum(ratio * advantages, clipped * advantages)


def beat(heartbeat: Heartbeat, doing: list[str]) -> None:
    while True:
        heartbeat(doing[0])
        threading.Event().wait(heartbeat.every / 2)


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # prints go to the log, never into the answers
    doing = ["idle"]
    if len(sys.argv) > 1:
        heartbeat = Heartbeat(Path(sys.argv[1]))
        threading.Thread(target=beat, args=(heartbeat, doing), daemon=True).start()
    model: TrainingModel | None = None
    for line in sys.stdin:
        command = json.loads(line)
        doing[0] = command["op"]
        try:
            if command["op"] == "init":
                model = TrainingModel(command)
            assert model is not None, "the first command must be init"
            reply = {"ok": True, "result": getattr(model, command["op"])(command)}
        except UserError as exc:
            reply = {"ok": False, "error": str(exc), "category": "user"}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "category": "server"}
        doing[0] = "idle"
        answers.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()

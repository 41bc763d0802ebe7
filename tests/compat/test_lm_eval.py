"""EleutherAI's lm-eval (pinned, in its own environment, with the CPU build of torch) scores a
multiple-choice task and a generation task (tests/compat/lm_eval_tasks: YAML and JSON Lines, no
hub download) on the served tiny model through `local-completions` (its log-likelihoods are our
completions' `echo` + `logprobs`), and on the same weights with its own `hf` model: the metrics
agree within a point, each choice's log-likelihood within 1e-3, and every generation is the same
text.

Slow lane: the environment holds torch, transformers and lm-eval's own dependencies (built once
per lock into the clients' cache, minutes the first time)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envs import client_python, run_flow
from tests.support import TINY, Server

TASKS = Path(__file__).parent / "lm_eval_tasks"


def fill_answers(tasks: Path, weights: Path) -> float:
    """Give each generation row whose answer is null the model's own greedy continuation, cut as
    lm-eval cuts it (at the task's `until`, a newline); the exact match expected of a faithful
    model is then the share of those rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    model: Any = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32)
    model.eval()
    path = tasks / "blorp_answer.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    filled = [row for row in rows if row["answer"] is None]
    for row in filled:
        ids = tokenizer(row["prompt"], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        row["answer"] = str(text).split("\n")[0]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(filled) / len(rows)


@pytest.mark.slow
def test_lm_eval_scores_the_served_model_as_its_own_hf_model(
    server: Server, tiny_model: Path, tmp_path: Path
) -> None:
    python = client_python("lm-eval-0.4.13")
    tasks = shutil.copytree(TASKS, tmp_path / "tasks")
    expected_match = fill_answers(tasks, tiny_model)
    seen = json.loads(
        run_flow(python, "lm_eval_flow.py", server.url, TINY, str(tiny_model), str(tasks))
    )
    assert seen["lm_eval"] == "0.4.13"
    served, own = seen["served"]["metrics"], seen["hf"]["metrics"]
    for task, metrics in own.items():
        for metric, value in metrics.items():
            assert 0 < value < 1, (task, metric, own)  # a measure, not a floor or a ceiling
            assert served[task][metric] == pytest.approx(value, abs=0.01), (task, metric, seen)
    assert own["blorp_answer"]["exact_match"] == pytest.approx(expected_match)
    assert seen["served"]["generations"] == seen["hf"]["generations"]
    for served_row, own_row in zip(
        seen["served"]["loglikelihoods"], seen["hf"]["loglikelihoods"], strict=True
    ):
        assert served_row == pytest.approx(own_row, abs=1e-3)

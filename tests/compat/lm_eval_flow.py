"""EleutherAI's lm-eval, pinned, in its own environment: the tasks of a folder (their YAML and
data files; no hub download) run on the served model through `local-completions` and on lm-eval's
own `hf` model over the same weights. The last line printed is the JSON report: each run's
metrics per task, its log-likelihoods of the choices and its generations, in the tasks' rows'
order.

    python lm_eval_flow.py URL MODEL_ID WEIGHTS_FOLDER TASKS_FOLDER
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

TASKS = ["blorp_choice", "blorp_answer"]


def main(url: str, model_id: str, weights: str, tasks: str) -> dict[str, Any]:
    os.chdir(tasks)  # the tasks' `data_files` are relative to the folder lm-eval runs in
    hub = str(Path(tasks) / ".hf")  # its caches, beside the tasks
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=hub)
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=tasks)
    served = {
        "model": model_id,
        "base_url": f"{url}/v1/completions",
        "tokenizer": weights,  # the served model's own tokenizer, read from its folder
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,  # lm-eval's token ids, scored as it split them
        "batch_size": 8,  # several prompts a request: the server prefills them together
        "max_retries": 1,
    }
    own = {"pretrained": weights, "dtype": "float32", "device": "cpu", "batch_size": 8}
    report: dict[str, Any] = {"lm_eval": _version()}
    for name, model, args in [("served", "local-completions", served), ("hf", "hf", own)]:
        results: Any = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=TASKS,
            task_manager=manager,
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
        )
        samples = {
            task: sorted(results["samples"][task], key=lambda s: s["doc_id"]) for task in TASKS
        }
        report[name] = {
            "metrics": {
                task: {
                    key.split(",")[0]: value
                    for key, value in results["results"][task].items()
                    if key.endswith(",none") and "stderr" not in key
                }
                for task in TASKS
            },
            # each choice's log-likelihood after its question, as lm-eval read it
            "loglikelihoods": [
                [float(choice[0]) for choice in s["filtered_resps"]]
                for s in samples["blorp_choice"]
            ],
            "generations": [s["filtered_resps"][0] for s in samples["blorp_answer"]],
        }
    return report


def _version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))

"""Try a grader on one row before a reinforcement job, through OpenAI's SDK.

Run: python docs/examples/graders.py [BASE_URL] [MODEL]
"""

import sys

from openai import BadRequestError, OpenAI

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8321"
client = OpenAI(base_url=f"{url}/v1", api_key="unused")
graders = client.fine_tuning.alpha.graders

# 1 when the answer is the row's, 0.5 when it holds it, plus a ROUGE-L closeness
grader = {
    "type": "multi",
    "name": "answer",
    "graders": {
        "exact": {
            "type": "string_check",
            "name": "exact",
            "input": "{{ sample.output_text | trim }}",
            "reference": "{{ item.answer }}",
            "operation": "eq",
        },
        "holds": {
            "type": "string_check",
            "name": "holds",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
            "operation": "ilike",
        },
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.explanation }}",
            "evaluation_metric": "rouge_l",
        },
    },
    "calculate_output": "max(exact, 0.5 * holds) + 0.1 * close",
}
row = {"answer": "Paris", "explanation": "Paris is the capital of France"}
for answer in ("Paris", "It is paris.", "Lyon"):
    result = graders.run(grader=grader, model_sample=answer, item=row)
    print(f"{answer!r}: {result.reward:.3f} {result.sub_rewards}")

try:
    graders.validate(grader={**grader, "calculate_output": "exact + closeness"})
except BadRequestError as e:
    print("refused:", e.param)

"""Two chat requests as one batch, through OpenAI's SDK: `python openai_batch.py URL MODEL`."""

import json
import sys
import time

import openai

url, model = sys.argv[1], sys.argv[2]  # http://127.0.0.1:8321, HuggingFaceTB/SmolLM2-135M-Instruct
client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
lines = [
    {
        "custom_id": f"q{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": question}]},
    }
    for i, question in enumerate(["What is 2+2?", "Name a colour."])
]
upload = client.files.create(
    file=("questions.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch"
)
batch = client.batches.create(
    input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
)
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(1)  # validating -> in_progress -> finalizing -> completed
    batch = client.batches.retrieve(batch.id)
print(batch.status, batch.request_counts)  # total, completed, failed
assert batch.output_file_id is not None
for line in client.files.content(batch.output_file_id).text.splitlines():
    result = json.loads(line)
    print(result["custom_id"], result["response"]["body"]["choices"][0]["message"]["content"])

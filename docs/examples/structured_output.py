"""Structured output through OpenAI's SDK: a JSON schema, then vLLM's `structured_outputs`.

Run: python docs/examples/structured_output.py [BASE_URL] [MODEL]
"""

import json
import sys

from openai import OpenAI

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8321"
model = sys.argv[2] if len(sys.argv) > 2 else "HuggingFaceTB/SmolLM2-135M-Instruct"
client = OpenAI(base_url=f"{url}/v1", api_key="unused")

city = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "enum": ["France", "Italy", "Spain"]},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}
answer = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a city in Europe."}],
    max_tokens=60,
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": city}},
)
print(json.loads(answer.choices[0].message.content or ""))

choice = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Is Paris in France?"}],
    max_tokens=5,
    extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
)
print(choice.choices[0].message.content)

grammar = 'start: NUMBER " " UNIT\nNUMBER: /[1-9][0-9]?/\nUNIT: "km" | "miles"'
distance = client.completions.create(
    model=model,
    prompt="Paris to Versailles:",
    max_tokens=10,
    extra_body={"structured_outputs": {"grammar": grammar}},
)
print(distance.choices[0].text)

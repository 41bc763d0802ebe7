#!/usr/bin/env bash
# Upload a dataset file, register it, page through its rows. Usage: walkthrough.sh [BASE_URL]
set -euo pipefail
BASE=${1:-http://127.0.0.1:8321}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/train.jsonl" <<'ROWS'
{"prompt": "What is the capital of France?", "completion": "Paris."}
{"prompt": "What is 2 + 2?", "completion": "4."}
{"prompt": "Name a primary colour.", "completion": "Red."}
ROWS

# 1. Upload the file (OpenAI's Files API shape).
FILE_ID=$(curl -sf -F purpose=fine-tune -F file=@"$WORK/train.jsonl" "$BASE/v1/files" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "uploaded $FILE_ID"

# 2. Register it as an instruct dataset: every row is validated.
curl -sf "$BASE/v1/datasets" -H 'content-type: application/json' -d "{
  \"dataset_id\": \"walkthrough-$$\", \"purpose\": \"instruct\",
  \"source\": {\"type\": \"file\", \"file_id\": \"$FILE_ID\"}}"
echo

# 3. Page through the rows, two at a time.
curl -sf "$BASE/v1/datasetio/iterrows/walkthrough-$$?start_index=0&limit=2"
echo

# 4. A bad row is reported with its row number and field.
curl -s "$BASE/v1/datasetio/append-rows/walkthrough-$$" -H 'content-type: application/json' \
  -d '{"rows": [{"prompt": "no completion"}]}'
echo

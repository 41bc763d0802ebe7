"""The same APIs in-process: no server, the same providers, validation and errors.

Run: python docs/examples/library_quickstart.py [run.yaml]
"""

import io
import sys

from llama_post import InvalidRequestError, LlamaPostClient
from llama_post.schema import UploadedFile

config = sys.argv[1] if len(sys.argv) > 1 else "run.yaml"

with LlamaPostClient(config) as client:
    rows = b'{"prompt": "What is the capital of France?", "completion": "Paris."}\n'
    file = client.files.upload_file(
        file=UploadedFile(filename="train.jsonl", file=io.BytesIO(rows)), purpose="fine-tune"
    )
    print("uploaded", file.id, file.sha256)

    dataset = client.datasets.register_dataset(
        purpose="instruct", source={"type": "file", "file_id": file.id}
    )
    print("registered", dataset.identifier, "with", dataset.row_count, "row(s)")

    page = client.datasets.iterrows(dataset.identifier, limit=10)
    print("first row:", page.data[0])

    try:
        client.datasets.append_rows(dataset.identifier, rows=[{"prompt": "no completion"}])
    except InvalidRequestError as error:
        print("refused:", error.message)

    client.datasets.unregister_dataset(dataset.identifier)

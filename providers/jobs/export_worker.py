"""The worker of a merge or export job: `python -m providers.jobs.export_worker FOLDER`.

It reads `export.json` (what `ExportJobs` resolved: the base folder, the adapter folder if any,
what to make and where), writes beside its target and renames into place, so a job cut off
leaves nothing that looks finished, and ends with `result.json` (size and sha256). An adapter
is merged with PEFT's `merge_and_unload` in the base's own type; the merged folder gets the
base's tokenizer (the chat template with it) and generation config."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from providers.jobs.folder import EXIT_CANCELLED, write_json_atomic
from providers.utils.gguf_export import write_gguf


def merge(base: Path, adapter: Path, out: Path) -> None:
    """The adapter merged into its base, saved as a plain Hugging Face folder in `out`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with contextlib.suppress(OSError):  # none: save_pretrained writes the model's defaults
        merged.generation_config = GenerationConfig.from_pretrained(str(base))
    merged.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def run(folder: Path) -> None:
    spec = json.loads((folder / "export.json").read_text())
    base = Path(spec["base_folder"])
    adapter = Path(spec["adapter_folder"]) if spec.get("adapter_folder") else None
    target = Path(spec["target"])
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "merge":
        assert adapter is not None
        print(f"merging {adapter} into {base}", flush=True)
        merge(base, adapter, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        result: dict[str, Any] = {"size_bytes": size, "sha256": None}
    else:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            source = base
            if adapter is not None:
                print(f"merging {adapter} into {base} first", flush=True)
                source = Path(scratch) / "merged"
                merge(base, adapter, source)
            print(f"writing {target.name} ({spec['outtype']})", flush=True)
            write_gguf(source, staging, spec["outtype"], spec["name"])
        staging.replace(target)
        result = {"size_bytes": target.stat().st_size, "sha256": digest(target)}
    write_json_atomic(folder / "result.json", result)
    print(f"done: {target}", flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_CANCELLED))
    run(Path(sys.argv[1]))


if __name__ == "__main__":
    main()

"""A Hugging Face folder written as one GGUF file, through the `gguf` package (llama.cpp's own
gguf-py): its writer, its tensor-name maps, its special-vocabulary reader (merges, special
tokens, the chat template) and its quantizers. What llama.cpp's `convert_hf_to_gguf.py` does for
a Llama-architecture model, in the few lines such a model needs:

- the hyperparameters under `llama.*`;
- the tokenizer as llama.cpp's `gpt2` (byte-level BPE: tokens, types, merges), with `pre`
  naming the pre-tokenizer where it is one llama.cpp knows by its rules (a SentencePiece
  tokenizer is refused: its scores are not in `tokenizer.json`);
- q_proj and k_proj rows permuted to GGML's rotary layout (transformers' GGUF reader undoes it);
- 1-D tensors (norms) kept in f32, 2-D ones in the asked type; a row whose length is not a
  whole number of quantization blocks falls back to f16; in a 4-bit file the token embedding
  (the output head too, where tied) is q8_0, as llama.cpp's quantizer keeps it above 4 bits.

Tensors are written one at a time (their headers first), so the model never has to be in
memory twice. `check_exportable` says up front what is not supported, so a request can be
refused before a job is queued.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
QUANT_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0"}
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}  # llama.cpp's LlamaFileType


def check_exportable(folder: Path) -> str | None:
    """Why the Hugging Face folder cannot be written as GGUF here; None where it can."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return f"{folder} has no readable config.json"
    archs = config.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        return (
            f"GGUF export supports {', '.join(sorted(ARCHITECTURES))}; this model is "
            f"{', '.join(archs) or 'of no stated architecture'}"
        )
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return f"GGUF export supports unscaled RoPE only; this model's is {rope.get('rope_type')}"
    try:
        tokenizer = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return f"{folder} has no readable tokenizer.json (a fast tokenizer's) to read it from"
    if tokenizer.get("model", {}).get("type") != "BPE" or not _byte_level(tokenizer):
        return (
            "GGUF export supports byte-level BPE tokenizers (GPT-2's kind: SmolLM2's, Qwen's); "
            "this model's is not one"
        )
    return None


def write_gguf(folder: Path, out: Path, outtype: str, name: str) -> None:
    """Write the Hugging Face model in `folder` to `out` as GGUF, its weights as `outtype`."""
    import gguf

    config = json.loads((folder / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    _hyperparameters(writer, config, name, outtype)
    _tokenizer(writer, folder, config)
    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    plan = []  # (gguf name, hf name, file, how it is stored)
    for file in sorted(folder.glob("*.safetensors")):
        for hf_name, shape in _shapes(file).items():
            if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise ValueError(f"{hf_name}: no GGUF name for this tensor of a llama model")
            qtype = _stored_as(mapped, shape, outtype)
            plan.append((mapped, hf_name, file, qtype))
            writer.add_tensor_info(mapped, *_info(shape, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    heads, kv_heads = int(config["num_attention_heads"]), _kv_heads(config)
    for _, hf_name, file, qtype in plan:
        data = _read(file, hf_name)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, heads, kv_heads)
        writer.write_tensor_data(_encoded(data, qtype))
    writer.close()


def _kv_heads(config: dict[str, Any]) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


def _hyperparameters(writer: Any, config: dict[str, Any], name: str, outtype: str) -> None:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(_kv_heads(config))
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(FILE_TYPES[outtype])
    if outtype in QUANT_TYPES:
        writer.add_quantization_version(2)


def _tokenizer(writer: Any, folder: Path, config: dict[str, Any]) -> None:
    """The vocabulary as llama.cpp's `gpt2` model reads it (a byte-level BPE: its tokens and
    their types), then what gguf's SpecialVocab finds: the merges, the special tokens' ids,
    whether BOS/EOS are added, and the chat template."""
    import gguf

    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab_size = int(config["vocab_size"])
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            token = added[i]["content"]
            kind = gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED
        elif i in by_id:
            token, kind = by_id[i], gguf.TokenType.NORMAL
        else:  # the embedding is larger than the vocabulary
            token, kind = f"[PAD{i}]", gguf.TokenType.UNUSED
        tokens.append(token)
        types.append(kind)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(llama_cpp_pre(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # whether BOS and EOS are added as the tokenizer itself adds them (a reader that is not
    # told assumes its own default, which may differ)
    special.add_special_token |= _adds_bos_eos(folder)
    special.add_to_gguf(writer, quiet=True)


def _adds_bos_eos(folder: Path) -> dict[str, bool]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {
        "bos": bos is not None and ids[:1] == [bos],
        "eos": eos is not None and ids[-1:] == [eos],
    }


def _byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(
        spec.get("decoder")
    )


def llama_cpp_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, recognised by its rules: SmolLM's
    (single digits, then GPT-2's byte-level split) or GPT-2's own; "default" otherwise (llama.cpp
    loads it and warns that it may split text differently)."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits"), p.get("use_regex")) for p in parts]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    return "default"


def _stored_as(mapped: str, shape: list[int], outtype: str) -> str:
    if len(shape) < 2:
        return "f32"
    if outtype not in QUANT_TYPES:
        return outtype
    qtype = "q8_0" if outtype == "q4_0" and mapped.startswith("token_embd") else outtype
    return qtype if shape[-1] % 32 == 0 else "f16"


def _info(shape: list[int], qtype: str) -> tuple[list[int], Any, int, Any]:
    """(shape, numpy dtype, bytes, raw type) for the writer's tensor header."""
    import gguf
    import numpy as np

    count = 1
    for dim in shape:
        count *= dim
    if qtype == "f32":
        return shape, np.dtype(np.float32), count * 4, None
    if qtype == "f16":
        return shape, np.dtype(np.float16), count * 2, None
    raw = gguf.GGMLQuantizationType[qtype.upper()]
    byte_shape = list(gguf.quant_shape_to_byte_shape(shape, raw))
    size = 1
    for dim in byte_shape:
        size *= dim
    return byte_shape, np.dtype(np.uint8), size, raw


def _encoded(data: Any, qtype: str) -> Any:
    import gguf
    import numpy as np

    if qtype == "f32":
        return data.astype(np.float32)
    if qtype == "f16":
        return data.astype(np.float16)
    return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType[qtype.upper()])


def _shapes(file: Path) -> dict[str, list[int]]:
    with file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _read(file: Path, name: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name).float().numpy()


def _permute(weights: Any, heads: int, kv_heads: int) -> Any:
    """HF's rotary halves to GGML's interleaved pairs (as convert_hf_to_gguf.py's `permute`)."""
    if kv_heads != heads:
        heads = kv_heads
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )

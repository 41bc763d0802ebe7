"""Tinker's protobuf wire (the `tinker` SDK 0.38.0's `tinker_public.proto`): its forward/backward
requests arrive as protobuf, and its forward/backward and sample results are read as protobuf
only. The schema is the SDK's own file descriptor (Apache-2.0), loaded into a pool of its own
so that it never meets another copy of it; tokens are int32 bytes, tensors raw float32 or int64
bytes, as the SDK writes and reads them (`tinker/proto/request_conv.py`, `response_conv.py`)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from llama_post.errors import InvalidRequestError

PROTOBUF = "application/x-protobuf"
_DESCRIPTOR = (
    "ChN0aW5rZXJfcHVibGljLnByb3RvEg10aW5rZXJfcHVibGljIpwDCg5TYW1wbGVSZXNwb25zZRIxCglzZXF1ZW5jZXMY"
    "ASADKAsyHi50aW5rZXJfcHVibGljLlNhbXBsZWRTZXF1ZW5jZRIcCg9wcm9tcHRfbG9ncHJvYnMYAiABKAxIAIgBARI+"
    "ChR0b3BrX3Byb21wdF9sb2dwcm9icxgDIAEoCzIbLnRpbmtlcl9wdWJsaWMuVG9wa0xvZ3Byb2JzSAGIAQESHwoXcHJv"
    "bXB0X2NhY2hlX2hpdF90b2tlbnMYBCABKAUSOgoWdGFyZ2V0X3Byb21wdF9sb2dwcm9icxgFIAEoCzIVLnRpbmtlcl9w"
    "dWJsaWMuVGVuc29ySAKIAQESPgoRcHJvbXB0X2FsdF90b2tlbnMYBiABKAsyHi50aW5rZXJfcHVibGljLlByb21wdEFs"
    "dFRva2Vuc0gDiAEBQhIKEF9wcm9tcHRfbG9ncHJvYnNCFwoVX3RvcGtfcHJvbXB0X2xvZ3Byb2JzQhkKF190YXJnZXRf"
    "cHJvbXB0X2xvZ3Byb2JzQhQKEl9wcm9tcHRfYWx0X3Rva2VucyJhCg9Qcm9tcHRBbHRUb2tlbnMSJQoGdG9rZW5zGAEg"
    "ASgLMhUudGlua2VyX3B1YmxpYy5UZW5zb3ISJwoIbG9ncHJvYnMYAiABKAsyFS50aW5rZXJfcHVibGljLlRlbnNvciLQ"
    "AQoPU2FtcGxlZFNlcXVlbmNlEi4KC3N0b3BfcmVhc29uGAEgASgOMhkudGlua2VyX3B1YmxpYy5TdG9wUmVhc29uEg4K"
    "BnRva2VucxgCIAEoDBIVCghsb2dwcm9icxgDIAEoDEgAiAEBEj8KFXRvcGtfc2FtcGxlZF9sb2dwcm9icxgEIAEoCzIb"
    "LnRpbmtlcl9wdWJsaWMuVG9wa0xvZ3Byb2JzSAGIAQFCCwoJX2xvZ3Byb2JzQhgKFl90b3BrX3NhbXBsZWRfbG9ncHJv"
    "YnMiTgoMVG9wa0xvZ3Byb2JzEhEKCXRva2VuX2lkcxgBIAEoDBIQCghsb2dwcm9icxgCIAEoDBIJCgFrGAMgASgNEg4K"
    "Bmxlbmd0aBgEIAEoDSJGCglTcGFyc2VDc3ISDgoGdmFsdWVzGAEgASgMEhQKDGNyb3dfaW5kaWNlcxgCIAEoDBITCgtj"
    "b2xfaW5kaWNlcxgDIAEoDCKJAQoGVGVuc29yEg8KBWRlbnNlGAEgASgMSAASLgoKc3BhcnNlX2NzchgCIAEoCzIYLnRp"
    "bmtlcl9wdWJsaWMuU3BhcnNlQ3NySAASIwoFZHR5cGUYAyABKA4yFC50aW5rZXJfcHVibGljLkRUeXBlEg0KBXNoYXBl"
    "GAQgAygDQgoKCGVuY29kaW5nImsKDUJhdGNoZWRUZW5zb3ISDAoEZGF0YRgBIAEoDBIPCgdvZmZzZXRzGAIgASgMEiMK"
    "BWR0eXBlGAMgASgOMhQudGlua2VyX3B1YmxpYy5EVHlwZRIWCg50cmFpbGluZ19zaGFwZRgEIAMoAyK4AQoLQXJyYXlS"
    "ZWNvcmQSEAoIdHlwZV90YWcYASABKAkSNgoGZmllbGRzGAIgAygLMiYudGlua2VyX3B1YmxpYy5BcnJheVJlY29yZC5G"
    "aWVsZHNFbnRyeRISCgpudW1fZGF0dW1zGAMgASgDGksKC0ZpZWxkc0VudHJ5EgsKA2tleRgBIAEoCRIrCgV2YWx1ZRgC"
    "IAEoCzIcLnRpbmtlcl9wdWJsaWMuQmF0Y2hlZFRlbnNvcjoCOAEi3QEKFUZvcndhcmRCYWNrd2FyZE91dHB1dBIbChNs"
    "b3NzX2ZuX291dHB1dF90eXBlGAEgASgJEjMKD2xvc3NfZm5fb3V0cHV0cxgCIAMoCzIaLnRpbmtlcl9wdWJsaWMuQXJy"
    "YXlSZWNvcmQSQgoHbWV0cmljcxgDIAMoCzIxLnRpbmtlcl9wdWJsaWMuRm9yd2FyZEJhY2t3YXJkT3V0cHV0Lk1ldHJp"
    "Y3NFbnRyeRouCgxNZXRyaWNzRW50cnkSCwoDa2V5GAEgASgJEg0KBXZhbHVlGAIgASgBOgI4ASK4AwoWRm9yd2FyZEJh"
    "Y2t3YXJkUmVxdWVzdBIQCghtb2RlbF9pZBgBIAEoCRIOCgZzZXFfaWQYAiABKAUSIgoEZGF0YRgDIAMoCzIULnRpbmtl"
    "cl9wdWJsaWMuRGF0dW0SDwoHbG9zc19mbhgEIAEoCRJPCg5sb3NzX2ZuX2NvbmZpZxgFIAMoCzI3LnRpbmtlcl9wdWJs"
    "aWMuRm9yd2FyZEJhY2t3YXJkUmVxdWVzdC5Mb3NzRm5Db25maWdFbnRyeRIUCgxmb3J3YXJkX29ubHkYBiABKAgSVAoR"
    "bG9zc19mbl9jb25maWdfdjIYByADKAsyOS50aW5rZXJfcHVibGljLkZvcndhcmRCYWNrd2FyZFJlcXVlc3QuTG9zc0Zu"
    "Q29uZmlnVjJFbnRyeRozChFMb3NzRm5Db25maWdFbnRyeRILCgNrZXkYASABKAkSDQoFdmFsdWUYAiABKAE6AjgBGlUK"
    "E0xvc3NGbkNvbmZpZ1YyRW50cnkSCwoDa2V5GAEgASgJEi0KBXZhbHVlGAIgASgLMh4udGlua2VyX3B1YmxpYy5Mb3Nz"
    "Q29uZmlnVmFsdWU6AjgBIjwKD0xvc3NDb25maWdWYWx1ZRIQCgZudW1iZXIYASABKAFIABIOCgR0ZXh0GAIgASgJSABC"
    "BwoFdmFsdWUitAIKBURhdHVtEikKC21vZGVsX2lucHV0GAEgAygLMhQudGlua2VyX3B1YmxpYy5DaHVuaxI+Cg5sb3Nz"
    "X2ZuX2lucHV0cxgCIAMoCzImLnRpbmtlcl9wdWJsaWMuRGF0dW0uTG9zc0ZuSW5wdXRzRW50cnkSOAoRbW9kZWxfaW5w"
    "dXRfc3BhbnMYAyADKAsyHS50aW5rZXJfcHVibGljLlByb3ZlbmFuY2VTcGFuEjoKE2xvc3NfZm5faW5wdXRfc3BhbnMY"
    "BCADKAsyHS50aW5rZXJfcHVibGljLlByb3ZlbmFuY2VTcGFuGkoKEUxvc3NGbklucHV0c0VudHJ5EgsKA2tleRgBIAEo"
    "CRIkCgV2YWx1ZRgCIAEoCzIVLnRpbmtlcl9wdWJsaWMuVGVuc29yOgI4ASKWAQoOUHJvdmVuYW5jZVNwYW4SPAoNcHJv"
    "bXB0X3Rva2VucxgBIAEoCzIjLnRpbmtlcl9wdWJsaWMuUHJvbXB0UHJvdmVuYW5jZVNwYW5IABI+Cg5zYW1wbGVkX3Rv"
    "a2VucxgCIAEoCzIkLnRpbmtlcl9wdWJsaWMuU2FtcGxlZFByb3ZlbmFuY2VTcGFuSABCBgoEc3BhbiJLChRQcm9tcHRQ"
    "cm92ZW5hbmNlU3BhbhITCgtzZXF1ZW5jZV9pZBgBIAEoCRIOCgZvZmZzZXQYAiABKAMSDgoGbGVuZ3RoGAMgASgDIkwK"
    "FVNhbXBsZWRQcm92ZW5hbmNlU3BhbhITCgtzZXF1ZW5jZV9pZBgBIAEoCRIOCgZvZmZzZXQYAiABKAMSDgoGbGVuZ3Ro"
    "GAMgASgDIp8BCgVDaHVuaxI3CgxlbmNvZGVkX3RleHQYASABKAsyHy50aW5rZXJfcHVibGljLkVuY29kZWRUZXh0Q2h1"
    "bmtIABIqCgVpbWFnZRgCIAEoCzIZLnRpbmtlcl9wdWJsaWMuSW1hZ2VDaHVua0gAEigKBGRtZWwYAyABKAsyGC50aW5r"
    "ZXJfcHVibGljLkRtZWxDaHVua0gAQgcKBWNodW5rIiIKEEVuY29kZWRUZXh0Q2h1bmsSDgoGdG9rZW5zGAEgASgMIrYB"
    "CgpJbWFnZUNodW5rEgwKBGRhdGEYASABKAwSDgoGZm9ybWF0GAIgASgJEhwKD2V4cGVjdGVkX3Rva2VucxgDIAEoBUgA"
    "iAEBEkAKE292ZXJyaWRlX2RpbWVuc2lvbnMYBCABKAsyHi50aW5rZXJfcHVibGljLkltYWdlRGltZW5zaW9uc0gBiAEB"
    "QhIKEF9leHBlY3RlZF90b2tlbnNCFgoUX292ZXJyaWRlX2RpbWVuc2lvbnMiMAoPSW1hZ2VEaW1lbnNpb25zEg0KBXdp"
    "ZHRoGAEgASgNEg4KBmhlaWdodBgCIAEoDSIZCglEbWVsQ2h1bmsSDAoEZG1lbBgBIAEoDCKlAgoOU2FtcGxpbmdQYXJh"
    "bXMSFwoKbWF4X3Rva2VucxgBIAEoBUgBiAEBEhEKBHNlZWQYAiABKARIAogBARIYCgt0ZW1wZXJhdHVyZRgDIAEoAkgD"
    "iAEBEhIKBXRvcF9rGAQgASgFSASIAQESEgoFdG9wX3AYBSABKAJIBYgBARIvCglzdG9wX3N0cnMYBiABKAsyGi50aW5r"
    "ZXJfcHVibGljLlN0b3BTdHJpbmdzSAASMAoLc3RvcF90b2tlbnMYByABKAsyGS50aW5rZXJfcHVibGljLlN0b3BUb2tl"
    "bnNIAEIGCgRzdG9wQg0KC19tYXhfdG9rZW5zQgcKBV9zZWVkQg4KDF90ZW1wZXJhdHVyZUIICgZfdG9wX2tCCAoGX3Rv"
    "cF9wIh0KC1N0b3BTdHJpbmdzEg4KBnZhbHVlcxgBIAMoCSIcCgpTdG9wVG9rZW5zEg4KBnZhbHVlcxgBIAMoBSo6CgpT"
    "dG9wUmVhc29uEhQKEFNUT1BfUkVBU09OX1NUT1AQABIWChJTVE9QX1JFQVNPTl9MRU5HVEgQASpnCgVEVHlwZRIVChFE"
    "VFlQRV9VTlNQRUNJRklFRBAAEhEKDURUWVBFX0ZMT0FUMzIQARIPCgtEVFlQRV9JTlQ2NBACEg8KC0RUWVBFX0lOVDMy"
    "EAMSEgoORFRZUEVfQkZMT0FUMTYQBGIGcHJvdG8z"
)
_FORMATS = {1: "f", 2: "q", 3: "i"}  # DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32: little-endian
_NAMES = {1: "float32", 2: "int64", 3: "int64"}
STOP_REASONS = {"stop": 0, "length": 1}
MASK_LOGPROB = -99999.0  # the SDK's filler of a top-k row (`tinker/types/topk_logprobs.py`)
Topk = list[list[tuple[int, float]] | None]  # at each position, its likeliest (token, logprob)


@cache
def _message(name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(base64.b64decode(_DESCRIPTOR))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tinker_public.{name}"))


def decode_forward_backward(body: bytes) -> dict[str, Any]:
    """A `ForwardBackwardRequest` as the JSON the SDK would have sent (`forward_backward_input`
    with `data`, `loss_fn`, `loss_fn_config`; `model_id`, `seq_id`, `forward_only`)."""
    message = _message("ForwardBackwardRequest")()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidRequestError(f"the protobuf body cannot be read: {exc}", param="body") from (
            None
        )
    config: dict[str, Any] = dict(message.loss_fn_config)
    for key, value in message.loss_fn_config_v2.items():
        config[key] = value.text if value.WhichOneof("value") == "text" else value.number
    return {
        "model_id": message.model_id,
        "seq_id": message.seq_id,
        "forward_only": message.forward_only,
        "forward_backward_input": {
            "loss_fn": message.loss_fn,
            "loss_fn_config": config or None,
            "data": [_datum(d, i) for i, d in enumerate(message.data)],
        },
    }


def _datum(datum: Any, index: int) -> dict[str, Any]:
    chunks = []
    for chunk in datum.model_input:
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise InvalidRequestError(
                f"data[{index}].model_input: {kind} chunks are not supported; send tokens",
                param=f"data[{index}].model_input",
            )
        tokens = _unpack("i", chunk.encoded_text.tokens)
        chunks.append({"type": "encoded_text", "tokens": tokens})
    inputs = {}
    for name, tensor in datum.loss_fn_inputs.items():
        if tensor.WhichOneof("encoding") != "dense" or tensor.dtype not in _FORMATS:
            raise InvalidRequestError(
                f"data[{index}].loss_fn_inputs.{name}: send a dense float32 or int64 tensor",
                param=f"data[{index}].loss_fn_inputs.{name}",
            )
        values = _unpack(_FORMATS[tensor.dtype], tensor.dense)
        inputs[name] = {"data": values, "dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape)}
    return {"model_input": {"chunks": chunks}, "loss_fn_inputs": inputs}


def encode_forward_backward_output(
    outputs: list[dict[str, list[float]]], metrics: dict[str, float]
) -> bytes:
    """One `ArrayRecord` holding every datum's float32 fields (`logprobs`, `elementwise_loss`)."""
    message = _message("ForwardBackwardOutput")()
    message.loss_fn_output_type = "ArrayRecord"
    record = message.loss_fn_outputs.add()
    record.num_datums = len(outputs)
    for name in outputs[0] if outputs else ():
        ends = [0]
        for output in outputs:
            ends.append(ends[-1] + 4 * len(output[name]))
        field = record.fields[name]
        field.data = b"".join(_pack("f", o[name]) for o in outputs)
        field.offsets = _pack("q", ends)
        field.dtype = 1
    for key, value in metrics.items():
        message.metrics[key] = value
    return bytes(message.SerializeToString())


def encode_sample_response(
    sequences: Sequence[tuple[str, list[int], list[float] | None, Topk | None]],
    prompt_logprobs: list[float] | None = None,
    topk_prompt: Topk | None = None,
) -> bytes:
    """Sampled sequences (stop reason, tokens, their log-probabilities, each position's top-k
    `(token, logprob)`), and the prompt's log-probabilities (NaN where there are none) and
    top-k."""
    message = _message("SampleResponse")()
    for reason, tokens, logprobs, topk in sequences:
        sequence = message.sequences.add()
        sequence.stop_reason = STOP_REASONS[reason]
        sequence.tokens = _pack("i", tokens)
        if logprobs is not None:
            sequence.logprobs = _pack("f", logprobs)
        if topk is not None:
            _topk(sequence.topk_sampled_logprobs, topk)
    if prompt_logprobs is not None:
        message.prompt_logprobs = _pack("f", prompt_logprobs)
    if topk_prompt is not None:
        _topk(message.topk_prompt_logprobs, topk_prompt)
    return bytes(message.SerializeToString())


def _topk(message: Any, rows: Topk) -> None:
    """A `TopkLogprobs`: `(length, k)` int32 ids and float32 logprobs, a missing row or entry
    filled with the SDK's sentinel (token 0, `MASK_LOGPROB`)."""
    k = max((len(r) for r in rows if r), default=0)
    ids: list[int] = []
    logprobs: list[float] = []
    for row in rows:
        padded = [*(row or []), *[(0, MASK_LOGPROB)] * (k - len(row or []))]
        ids += [t for t, _ in padded]
        logprobs += [lp for _, lp in padded]
    message.length, message.k = len(rows), k
    message.token_ids, message.logprobs = _pack("i", ids), _pack("f", logprobs)


def _unpack(kind: str, data: bytes) -> list[Any]:
    size = struct.calcsize(kind)
    if len(data) % size:
        raise InvalidRequestError(f"a tensor of {len(data)} bytes is not whole {size}-byte items")
    return list(struct.unpack(f"<{len(data) // size}{kind}", data))


def _pack(kind: str, values: list[Any]) -> bytes:
    return struct.pack(f"<{len(values)}{kind}", *values)

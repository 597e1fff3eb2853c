"""Flower records of the tsfa messages: numpy arrays in ``ArrayRecord``s, plain values in
``ConfigRecord``s (flwr 1.4x Message API).

* global model (server -> client): ``B.{m}``, ``A.{m}`` per LoRA module m and ``head.{name}``;
* upload (client -> server): per module ``m{m}.B_values``, ``m{m}.A_values``, ``m{m}.shape_B``,
  ``m{m}.shape_A`` and, when present, ``m{m}.rank_index`` / ``m{m}.B_index`` / ``m{m}.A_index`` /
  ``m{m}.seed`` (:class:`~tsfa.fl.compress.ModuleUpload`), plus ``head.{name}``; the method and
  message space travel in a ConfigRecord (:func:`upload_meta`);
* error-feedback memory (client state): ``e{m}.{j}``.

Tensors go to arrays of the same dtype and back bit-exactly; bfloat16 (which numpy lacks)
travels as its 16-bit pattern under a key ending in ``~bf16``. So the server aggregates exactly
what the in-process engine aggregates.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from tsfa.fl.client import GlobalModel
from tsfa.fl.compress import ModuleUpload, Upload

_OPTIONAL = ("rank_index", "B_index", "A_index")


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's records as Flower sends them: every object of the record tree
    (record dict, records, arrays, array chunks) serialised (``deflate``), each distinct object
    once (Flower pushes objects by content id). Transport framing (HTTP, TLS) not included."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())
BF16 = "~bf16"


def _put(items: dict, key: str, x) -> None:
    """``items[key]`` = x as an Array (bfloat16 tensors as int16 bit patterns, key + BF16)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            key, x = key + BF16, x.view(torch.int16)
        x = x.numpy()
    items[key] = Array(np.ascontiguousarray(x))


def _tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Every entry of ``record`` as a tensor, keys without the BF16 marker."""
    out = {}
    for key in record:
        t = torch.from_numpy(record[key].numpy()).clone()  # torch's (aligned) memory
        if key.endswith(BF16):
            key, t = key[:-len(BF16)], t.view(torch.bfloat16)
        out[key] = t
    return out


def _head(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}


def model_to_record(model: GlobalModel) -> ArrayRecord:
    """Global factors [(B (d_out, r), A (r, d_in))] and head state dict as one ArrayRecord."""
    items: dict = {}
    for m, (B, A) in enumerate(model.factors):
        _put(items, f"B.{m}", B)
        _put(items, f"A.{m}", A)
    for k, v in model.head.items():
        _put(items, f"head.{k}", v)
    return ArrayRecord(items)


def record_to_model(record: ArrayRecord) -> GlobalModel:
    """Inverse of :func:`model_to_record`."""
    t = _tensors(record)
    n = sum(1 for k in t if k.startswith("B."))
    return GlobalModel([(t[f"B.{m}"], t[f"A.{m}"]) for m in range(n)], _head(t))


def upload_to_record(upload: Upload, head: dict[str, torch.Tensor]) -> ArrayRecord:
    """Exactly what a client puts on the air: its compressed upload and its head."""
    items: dict = {}
    for m, mu in enumerate(upload.modules):
        _put(items, f"m{m}.shape_B", np.asarray(mu.shape_B, dtype=np.int64))
        _put(items, f"m{m}.shape_A", np.asarray(mu.shape_A, dtype=np.int64))
        _put(items, f"m{m}.B_values", mu.B_values)
        _put(items, f"m{m}.A_values", mu.A_values)
        for name in _OPTIONAL:
            if getattr(mu, name) is not None:
                _put(items, f"m{m}.{name}", getattr(mu, name))
        if mu.seed is not None:
            _put(items, f"m{m}.seed", np.asarray([mu.seed], dtype=np.int64))
    for k, v in head.items():
        _put(items, f"head.{k}", v)
    return ArrayRecord(items)


def upload_meta(upload: Upload) -> ConfigRecord:
    return ConfigRecord({"method": upload.method, "space": upload.space})


def record_to_upload(record: ArrayRecord, meta: ConfigRecord) -> tuple[Upload, dict]:
    """Inverse of :func:`upload_to_record` (with :func:`upload_meta`): (upload, head)."""
    t = _tensors(record)
    mods = []
    for m in range(sum(1 for k in t if k.endswith(".shape_B"))):
        opt = {name: t[f"m{m}.{name}"] for name in _OPTIONAL if f"m{m}.{name}" in t}
        seed = int(t[f"m{m}.seed"][0]) if f"m{m}.seed" in t else None
        mods.append(ModuleUpload(tuple(int(v) for v in t[f"m{m}.shape_B"]),
                                 tuple(int(v) for v in t[f"m{m}.shape_A"]),
                                 t[f"m{m}.B_values"], t[f"m{m}.A_values"], seed=seed, **opt))
    return Upload(str(meta["method"]), str(meta["space"]), tuple(mods)), _head(t)


def memory_to_record(memory) -> ArrayRecord:
    """An error-feedback memory (list of per-module tuples of tensors; () when stateless)."""
    items: dict = {}
    for m, xs in enumerate(memory):
        for j, x in enumerate(xs):
            _put(items, f"e{m}.{j}", x)
    return ArrayRecord(items)


def record_to_memory(record: ArrayRecord) -> list[tuple[torch.Tensor, ...]]:
    """Inverse of :func:`memory_to_record` (an empty record gives [])."""
    out: dict[int, dict[int, torch.Tensor]] = {}
    for key, x in _tensors(record).items():
        m, j = key[1:].split(".")
        out.setdefault(int(m), {})[int(j)] = x
    return [tuple(v[j] for j in sorted(v)) for _, v in sorted(out.items())]


__all__ = ["content_bytes", "model_to_record", "record_to_model", "upload_to_record", "upload_meta",
           "record_to_upload", "memory_to_record", "record_to_memory"]

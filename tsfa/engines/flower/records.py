"""Flower records of the tsfa messages: numpy arrays in ``ArrayRecord``s, plain values in
``ConfigRecord``s (flwr 1.4x Message API).

* global model (server -> client): ``B.{m}``, ``A.{m}`` per LoRA module m and ``head.{name}``;
* upload (client -> server): per module ``m{m}.B_values``, ``m{m}.A_values``, ``m{m}.shape_B``,
  ``m{m}.shape_A`` and, when present, ``m{m}.rank_index`` / ``m{m}.B_index`` / ``m{m}.A_index`` /
  ``m{m}.seed`` (:class:`~tsfa.fl.compress.ModuleUpload`), plus ``head.{name}``; the method and
  message space travel in a ConfigRecord (:func:`upload_meta`);
* error-feedback memory (client state): ``e{m}.{j}``.

Float32 tensors go to float32 arrays and back bit-exactly, so the server aggregates exactly what
the in-process engine aggregates.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from tsfa.fl.compress import ModuleUpload, Upload

_OPTIONAL = ("rank_index", "B_index", "A_index")


def _arr(x) -> Array:
    return Array(np.ascontiguousarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x))


def _tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    return torch.from_numpy(record[key].numpy().copy())


def model_to_record(factors, head: dict[str, torch.Tensor]) -> ArrayRecord:
    """Global factors [(B (d_out, r), A (r, d_in))] and head state dict as one ArrayRecord."""
    items = {}
    for m, (B, A) in enumerate(factors):
        items[f"B.{m}"] = _arr(B)
        items[f"A.{m}"] = _arr(A)
    items.update({f"head.{k}": _arr(v) for k, v in head.items()})
    return ArrayRecord(items)


def _head(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k[len("head."):]: _tensor(record, k) for k in record if k.startswith("head.")}


def record_to_model(record: ArrayRecord) -> tuple[list, dict[str, torch.Tensor]]:
    """Inverse of :func:`model_to_record`: (factors, head state dict)."""
    n = sum(1 for k in record if k.startswith("B."))
    factors = [(_tensor(record, f"B.{m}"), _tensor(record, f"A.{m}")) for m in range(n)]
    return factors, _head(record)


def upload_to_record(upload: Upload, head: dict[str, torch.Tensor]) -> ArrayRecord:
    """Exactly what a client puts on the air: its compressed upload and its head."""
    items = {}
    for m, mu in enumerate(upload.modules):
        items[f"m{m}.shape_B"] = _arr(np.asarray(mu.shape_B, dtype=np.int64))
        items[f"m{m}.shape_A"] = _arr(np.asarray(mu.shape_A, dtype=np.int64))
        items[f"m{m}.B_values"] = _arr(mu.B_values)
        items[f"m{m}.A_values"] = _arr(mu.A_values)
        for name in _OPTIONAL:
            if getattr(mu, name) is not None:
                items[f"m{m}.{name}"] = _arr(getattr(mu, name))
        if mu.seed is not None:
            items[f"m{m}.seed"] = _arr(np.asarray([mu.seed], dtype=np.int64))
    items.update({f"head.{k}": _arr(v) for k, v in head.items()})
    return ArrayRecord(items)


def upload_meta(upload: Upload) -> ConfigRecord:
    return ConfigRecord({"method": upload.method, "space": upload.space})


def record_to_upload(record: ArrayRecord, meta: ConfigRecord) -> tuple[Upload, dict]:
    """Inverse of :func:`upload_to_record` (with :func:`upload_meta`): (upload, head)."""
    n = sum(1 for k in record if k.endswith(".shape_B"))
    mods = []
    for m in range(n):
        opt = {name: _tensor(record, f"m{m}.{name}") for name in _OPTIONAL
               if f"m{m}.{name}" in record}
        seed = int(record[f"m{m}.seed"].numpy()[0]) if f"m{m}.seed" in record else None
        mods.append(ModuleUpload(
            tuple(int(v) for v in record[f"m{m}.shape_B"].numpy()),
            tuple(int(v) for v in record[f"m{m}.shape_A"].numpy()),
            _tensor(record, f"m{m}.B_values"), _tensor(record, f"m{m}.A_values"),
            seed=seed, **opt))
    return Upload(str(meta["method"]), str(meta["space"]), tuple(mods)), _head(record)


def memory_to_record(memory) -> ArrayRecord:
    """An error-feedback memory (list of per-module tuples of tensors; () when stateless)."""
    return ArrayRecord({f"e{m}.{j}": _arr(x) for m, xs in enumerate(memory)
                        for j, x in enumerate(xs)})


def record_to_memory(record: ArrayRecord) -> list[tuple[torch.Tensor, ...]]:
    """Inverse of :func:`memory_to_record` (an empty record gives [])."""
    out: dict[int, dict[int, torch.Tensor]] = {}
    for key in record:
        m, j = key[1:].split(".")
        out.setdefault(int(m), {})[int(j)] = _tensor(record, key)
    return [tuple(v[j] for j in sorted(v)) for _, v in sorted(out.items())]


__all__ = ["model_to_record", "record_to_model", "upload_to_record", "upload_meta",
           "record_to_upload", "memory_to_record", "record_to_memory"]

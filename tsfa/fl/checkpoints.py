"""Pre-trained ViT weights into tsfa's ViT: Hugging Face, timm and tsfa names (docs/interop.md).

Accepted: a ``save_pretrained`` folder of ``transformers`` 4.x / 5.x (``config.json`` plus
``model.safetensors``, ``pytorch_model.bin`` or their sharded ``*.index.json``), or one weights
file (``.safetensors``, or a torch state dict, e.g. ``.bin`` / ``.pt`` / ``.pth``; a
``config.json`` beside it is read too). Key names may be

* Hugging Face (``ViTForImageClassification`` / ``ViTModel``, with or without the ``vit.``
  prefix): ``encoder.layer.{i}.attention.attention.query.weight``, ... as written by
  ``save_pretrained``, and transformers 5.x's in-memory ``layers.{i}.attention.q_proj.weight``,
  ... (``model.state_dict()``) (``HF_KEY_MAP``);
* timm (``VisionTransformer`` with class-token pooling): ``blocks.{i}.attn.qkv.weight`` (split
  into query, key, value), ``blocks.{i}.attn.proj``, ``patch_embed.proj`` (``TIMM_KEY_MAP``);
* tsfa's own (``ViT.state_dict()``).

Every key is mapped and every shape checked *before* anything is copied: the model either gets
all its backbone keys or nothing, and a misfit raises one :class:`CheckpointError` listing what is
missing, unexpected or mis-shaped (and config.json values that contradict the model: heads,
LayerNorm eps, activation). The pooler (unused by the classifier) is the only key skipped
silently; the head is loaded only with ``include_head``. Position embeddings are resized
bicubically when the image size differs (as ``transformers``' ``interpolate_pos_encoding``;
with antialiasing, as timm, for timm-named weights). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tsfa.fl.lora import LoRALinear
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig, unsupported_settings

Tensor = torch.Tensor
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TIMM_LAYER_NORM_EPS = 1e-6

# A block's parameters: (our name in blocks.{i}, transformers 4.x name as save_pretrained writes it
# under encoder.layer.{i}, transformers 5.x in-memory name (model.state_dict()) under layers.{i}).
HF_BLOCK_NAMES: tuple[tuple[str, str, str], ...] = (
    ("norm1", "layernorm_before", "layernorm_before"),
    ("attn.query", "attention.attention.query", "attention.q_proj"),
    ("attn.key", "attention.attention.key", "attention.k_proj"),
    ("attn.value", "attention.attention.value", "attention.v_proj"),
    ("attn.out", "attention.output.dense", "attention.o_proj"),
    ("norm2", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense", "mlp.fc1"),
    ("mlp.fc2", "output.dense", "mlp.fc2"),
)
# (pattern, our name); the "vit." prefix is optional (ViTModel checkpoints omit it).
HF_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.\1"),
    *((rf"{layer}\.(\d+)\.{re.escape(names[col])}\.(weight|bias)", rf"blocks.\1.{names[0]}.\2")
      for col, layer in ((1, r"encoder\.layer"), (2, "layers")) for names in HF_BLOCK_NAMES),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
)
# timm names that differ from ours; "{qkv}" marks the fused projection split in three.
TIMM_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.{qkv}.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.out.\2"),
)
OURS = re.compile(r"cls_token|pos_embed|patch_embed\.(weight|bias)|norm\.(weight|bias)|"
                  r"head\.(weight|bias)|blocks\.\d+\.(norm[12]|attn\.(query|key|value|out)|"
                  r"mlp\.fc[12])\.(weight|bias)")
IGNORED = re.compile(r"(vit\.)?(pooler\..*|embeddings\.mask_token)")  # no counterpart, unused


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint load did, for the result folder (``as_dict``).

    source: the weights file(s) read; sha256: hex digest of their bytes (shards in index order);
    format: "transformers", "timm" or "tsfa" names; loaded: our keys written; skipped: the file's
    keys deliberately not loaded (head without ``include_head``, pooler); missing: our keys left
    as initialised (the head without ``include_head``); resized: e.g. "pos_embed 4x4 -> 2x2".
    """

    source: str
    sha256: str
    format: str
    loaded: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    resized: tuple[str, ...] = ()

    @property
    def keys_loaded(self) -> int:
        return len(self.loaded)

    def as_dict(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "format": self.format,
                "keys_loaded": self.keys_loaded, "skipped": list(self.skipped),
                "missing": list(self.missing), "resized": list(self.resized)}


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Raw contents: ``state`` (their names), ``config`` (config.json or None), ``files`` read."""

    state: dict[str, Tensor]
    config: dict | None
    files: tuple[Path, ...]
    sha256: str


def _weight_files(path: Path) -> list[Path]:
    if path.is_dir():
        found = next((path / n for n in WEIGHT_FILES if (path / n).exists()), None)
        if found is None:
            raise CheckpointError(f"no weights file in {path}: looked for {', '.join(WEIGHT_FILES)}")
        path = found
    elif not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.name.endswith(".index.json"):
        shards = dict.fromkeys(json.loads(path.read_text())["weight_map"].values())
        return [path.parent / s for s in shards]
    return [path]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local ``.safetensors`` file or torch state dict (weights only; a
    {"state_dict": ...} or {"model": ...} wrapper is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # optional: pip install "tsfa[interop]"
            raise ImportError(f"reading {path} needs safetensors: pip install 'tsfa[interop]'") from None
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or weights-only errors: one readable line
        raise CheckpointError(f"{path} is not a torch state dict: {err}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a folder or file (see module docstring): tensors, config.json if any, sha256."""
    path = Path(path)
    files = _weight_files(path)
    state, digest = {}, hashlib.sha256()
    for f in files:
        state.update(read_state_dict(f))
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return Checkpoint(state, read_config(path), tuple(files), digest.hexdigest())


def read_config(path: str | Path) -> dict | None:
    """The config.json of a checkpoint folder, or beside a weights file; None if there is none."""
    path = Path(path)
    cfg_file = (path if path.is_dir() else path.parent) / "config.json"
    return json.loads(cfg_file.read_text()) if cfg_file.exists() else None


def map_key(key: str) -> tuple[str, ...] | None:
    """Our name(s) for a checkpoint key (three for timm's fused qkv), or None if none."""
    if OURS.fullmatch(key):
        return (key,)
    bare = key.removeprefix("vit.")
    for pattern, repl in HF_KEY_MAP:
        if re.fullmatch(pattern, bare):
            return (re.sub(pattern, repl, bare),)
    for pattern, repl in TIMM_KEY_MAP:
        if re.fullmatch(pattern, key):
            name = re.sub(pattern, repl, key)
            return tuple(name.replace("{qkv}", p) for p in ("query", "key", "value")) \
                if "{qkv}" in name else (name,)
    return None


def hf_to_tsfa_key(key: str) -> str | None:
    """Our parameter name for a Hugging Face ViT name, or None if it has no counterpart."""
    bare = key.removeprefix("vit.")
    return next((re.sub(p, r, bare) for p, r in HF_KEY_MAP if re.fullmatch(p, bare)), None)


def key_format(keys) -> str:
    """"transformers", "timm" or "tsfa", from the names of a state dict."""
    keys = list(keys)
    if any(re.search(r"(^|\.)(encoder\.layer|layers)\.\d+\.", k) for k in keys):
        return "transformers"
    if any(re.search(r"attn\.qkv\.|patch_embed\.proj\.", k) for k in keys):
        return "timm"
    return "tsfa"


def resize_pos_embed(pos: Tensor, grid: int, antialias: bool = False) -> Tensor:
    """Position embeddings (1, 1 + g0^2, D) -> (1, 1 + grid^2, D): the cls position kept, the
    g0 x g0 patch grid resized bicubically (align_corners=False) in float32; ``antialias`` as
    timm's ``resample_abs_pos_embed`` (transformers' ``interpolate_pos_encoding`` has none)."""
    cls_pos, patches = pos[:, :1], pos[:, 1:]
    g0, dim = math.isqrt(patches.shape[1]), pos.shape[-1]
    img = patches.float().reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False,
                        antialias=antialias)
    return torch.cat([cls_pos, img.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)],
                     dim=1)


def expected_shapes(cfg: ViTConfig) -> dict[str, torch.Size]:
    """Our parameter names and shapes for ``cfg`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in ViT(cfg).state_dict().items()}


def _resizable(theirs: torch.Size, ours: torch.Size) -> bool:
    """Both (1, 1 + g^2, D) with the same D: a square patch grid to resize."""
    if len(theirs) != 3 or len(ours) != 3 or theirs[0] != 1 or theirs[2] != ours[2]:
        return False
    return all(t >= 2 and math.isqrt(t - 1) ** 2 == t - 1 for t in (theirs[1], ours[1]))


def _listing(title: str, items: list[str], limit: int = 25) -> str:
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def config_mismatches(config: Mapping | None, cfg: ViTConfig) -> list[str]:
    """config.json values that tensor shapes cannot reveal but that contradict ``cfg``
    (heads, LayerNorm eps), plus unsupported settings."""
    if not config or "hidden_size" not in config:
        return []
    out = [f"{key} = {config[key]} in config.json, ViTConfig.{field} = {ours}"
           for key, field, ours in (("num_attention_heads", "heads", cfg.heads),
                                    ("layer_norm_eps", "layer_norm_eps", cfg.layer_norm_eps))
           if key in config and config[key] != ours]
    return out + unsupported_settings(config)


def convert_state_dict(state: Mapping[str, Tensor], cfg: ViTConfig, include_head: bool = False,
                       config: Mapping | None = None, source: str = "checkpoint"
                       ) -> tuple[dict[str, Tensor], dict]:
    """Their tensors -> ours for ``cfg``, all keys mapped and all shapes checked.

    Returns (tensors by our name, {"format", "loaded", "skipped", "missing", "resized"}); raises
    :class:`CheckpointError` listing every missing, unexpected or mis-shaped key at once.
    """
    fmt = key_format(state)
    shapes = expected_shapes(cfg)
    out: dict[str, Tensor] = {}
    skipped, unexpected, misshaped, resized = [], [], [], []
    bad_shape: set[str] = set()
    for key, value in state.items():
        names = map_key(key)
        if names is None or any(n not in shapes for n in names):
            (skipped if IGNORED.fullmatch(key) else unexpected).append(key)
            continue
        if names[0].startswith("head.") and not include_head:
            skipped.append(key)
            continue
        parts = value.chunk(3) if len(names) == 3 and value.shape[0] % 3 == 0 else (value,)
        want = torch.Size([len(names) * shapes[names[0]][0], *shapes[names[0]][1:]])
        if len(parts) != len(names) or any(p.shape != shapes[n] for p, n in zip(parts, names,
                                                                                  strict=False)):
            if names == ("pos_embed",) and _resizable(value.shape, shapes["pos_embed"]):
                g0, g = math.isqrt(value.shape[1] - 1), math.isqrt(shapes["pos_embed"][1] - 1)
                parts = (resize_pos_embed(value, g, antialias=fmt == "timm"),)
                resized.append(f"pos_embed {g0}x{g0} -> {g}x{g} (bicubic"
                               f"{', antialias' if fmt == 'timm' else ''})")
            else:
                misshaped.append(f"{key} -> {', '.join(names)}: {tuple(value.shape)} in file, "
                                 f"{tuple(want)} in model")
                bad_shape.update(names)
                continue
        for name, part in zip(names, parts, strict=True):
            if name in out:
                unexpected.append(f"{key} (a second source for {name})")
            out[name] = part
    needed = [k for k in shapes if include_head or not k.startswith("head.")]
    missing = [k for k in needed if k not in out and k not in bad_shape]
    problems = config_mismatches(config, cfg)
    if missing or unexpected or misshaped or problems:
        lines = [f"{source} ({fmt} names) does not fit tsfa's ViT {cfg}; nothing was loaded:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", misshaped), ("config", problems)):
            if items:
                lines.append(_listing(title, items))
        raise CheckpointError("\n".join(lines))
    left = tuple(k for k in shapes if k not in out)
    return out, {"format": fmt, "loaded": tuple(out), "skipped": tuple(skipped),
                 "missing": left, "resized": tuple(resized)}


def _convert(ck: Checkpoint, cfg: ViTConfig, include_head: bool):
    source = ", ".join(str(f) for f in ck.files)
    tensors, info = convert_state_dict(ck.state, cfg, include_head, ck.config, source)
    return tensors, LoadReport(source, ck.sha256, **info)


def convert_checkpoint(path: str | Path, cfg: ViTConfig, include_head: bool = False
                       ) -> tuple[dict[str, Tensor], LoadReport]:
    """Read ``path`` and convert it for ``cfg``: (tensors by our name, report)."""
    return _convert(read_checkpoint(path), cfg, include_head)


def _canonical_keys(model: nn.Module) -> dict[str, str]:
    """Our plain name -> the model's state-dict key (a LoRA-wrapped projection's base layer is
    ``<name>.base.weight``); LoRA factors are not backbone keys."""
    wrapped = {f"{n}." for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    out = {}
    for key in model.state_dict():
        if ".lora_A" in key or ".lora_B" in key:
            continue
        plain = key
        for prefix in wrapped:
            if key.startswith(prefix + "base."):
                plain = prefix + key[len(prefix) + 5:]
        out[plain] = key
    return out


@torch.no_grad()
def _copy_into(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    state, keys = model.state_dict(), _canonical_keys(model)
    for name, value in tensors.items():
        state[keys[name]].copy_(value)


def load_pretrained(model: ViT, path: str | Path, include_head: bool = False) -> LoadReport:
    """Copy a checkpoint (folder or file, any accepted names) into ``model``, all or nothing.

    The head is skipped unless ``include_head`` (docs/model.md §1: a new head is trained). Works
    before or after ``apply_lora``. Raises :class:`CheckpointError` (one message) on any misfit.
    """
    tensors, report = convert_checkpoint(path, model.cfg, include_head)
    _copy_into(model, tensors)
    return report


def _infer_config(state: Mapping[str, Tensor], heads: int | None, fmt: str) -> dict:
    """ViTConfig fields readable from tensor shapes (our names), for checkpoints without config."""
    ours = {n: v for k, v in state.items() for n in (map_key(k) or ())}
    need = ("cls_token", "pos_embed", "patch_embed.weight", "blocks.0.mlp.fc1.weight")
    absent = [n for n in need if n not in ours]
    if absent or heads is None:
        why = f"no {', '.join(absent)}" if absent else "the number of heads is not in the weights"
        raise CheckpointError(f"cannot build a ViTConfig from this checkpoint ({why}); it has no "
                              "transformers config.json: pass heads= (and sizes) explicitly")
    dim, c, p, _ = ours["patch_embed.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    fields = {"image_size": math.isqrt(ours["pos_embed"].shape[1] - 1) * p, "patch_size": p,
              "in_chans": c, "dim": dim, "depth": depth, "heads": heads,
              "mlp_ratio": ours["blocks.0.mlp.fc1.weight"].shape[0] / dim,
              "layer_norm_eps": TIMM_LAYER_NORM_EPS if fmt == "timm" else ViTConfig.layer_norm_eps}
    if "head.weight" in ours:
        fields["num_classes"] = ours["head.weight"].shape[0]
    return fields


vit_config_from_hf = ViTConfig.from_hf  # tsfa's ViTConfig from a transformers config.json dict


def load_vit(path: str | Path, include_head: bool = False, generator: torch.Generator | None = None,
             **overrides) -> tuple[ViT, LoadReport]:
    """A ViT built from the checkpoint's config.json (or its shapes: pass ``heads``) with
    ``overrides`` (``num_classes``, ``image_size``, ``layer_norm_eps``, ...), weights loaded."""
    ck = read_checkpoint(path)
    if ck.config and "hidden_size" in ck.config:
        cfg = vit_config_from_hf(ck.config, **overrides)
    else:
        fields = _infer_config(ck.state, overrides.pop("heads", None), key_format(ck.state))
        cfg = ViTConfig(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})
    model = ViT(cfg, generator)
    tensors, report = _convert(ck, cfg, include_head)
    _copy_into(model, tensors)
    return model, report


__all__ = ["CheckpointError", "LoadReport", "Checkpoint", "HF_BLOCK_NAMES", "HF_KEY_MAP", "TIMM_KEY_MAP",
           "read_state_dict", "read_checkpoint", "read_config", "map_key", "hf_to_tsfa_key",
           "key_format", "resize_pos_embed", "expected_shapes", "config_mismatches",
           "convert_state_dict", "convert_checkpoint", "load_pretrained",
           "vit_config_from_hf", "load_vit"]

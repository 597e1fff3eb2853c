"""Every client's local training in one batched computation (docs/model.md §5).

``batched_local_train`` is :func:`tsfa.fl.client.local_train` for K clients at once. The frozen
backbone is shared; client k's LoRA factors and head are slice k of tensors stacked along a
leading client axis:

    B_m: (K, d_out, r),  A_m: (K, r, d_in)  per LoRA module m;  W_head: (K, C, d),  b_head: (K, C).

Each local step draws client k's minibatch I_k from its own generator exactly as the sequential
path does (``rng.integers(N_k, size=n_k)``, n_k = min(batch, N_k)), pads every minibatch to
n = max_k n_k by repeating its first index, and runs one forward/backward pass over the
(K, n) samples: the shared projections as one GEMM over all K n T tokens, the LoRA update of
client k as batched matmuls  x_k A_k^T B_k^T  ((K, n T, d_in) @ (K, d_in, r) @ (K, r, d_out)),
or, where r is not small against d, with the per-client weight W0 + s B_k A_k (one bmm), the
head as one ``baddbmm``. The loss summed over clients,

    L = sum_k [ (1/n_k) sum_{j < n_k} CE(f_k(x_kj), y_kj) + zeta sum_m R(B_km, A_km) ],

has d L / d theta_k = d L_k / d theta_k (client k's parameters enter only its own term; padded
samples have weight 0), so one AdamW or SGD step on the stacked parameters (both element-wise)
is K independent optimisers. The result equals the sequential path up to floating-point
rounding (tested: float64 to 1e-10, float32 to 1e-5).

Two exact savings of the hand-written forward pass: the last block computes its query,
attention output, MLP and residual for the cls token only (the only token the head reads), and
attention runs over the merged client x sample axis (the backbone is shared).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tsfa.fl.device import autocast
from tsfa.fl.lora import (
    Factors,
    LoRALinear,
    frozen_names,
    get_factors,
    get_head_state,
    lora_modules,
    set_factors,
    set_head_state,
)
from tsfa.fl.vit import ViT

Tensor = torch.Tensor
Stacked = list[tuple[Tensor, Tensor]]  # per module: (B (K, d_out, r), A (K, r, d_in))


def stack_factors(factors: Sequence[Factors], like: Stacked | nn.Module) -> Stacked:
    """K clients' factors -> per module (B (K, d_out, r), A (K, r, d_in)), on the device and in
    the dtype of the model's LoRA parameters (``like``: the model, or stacked factors)."""
    ref = ([(m.lora_B, m.lora_A) for _, m in lora_modules(like)] if isinstance(like, nn.Module)
           else like)
    for k, f in enumerate(factors):
        shapes = [(tuple(b.shape), tuple(a.shape)) for b, a in f]
        if shapes != [(tuple(b.shape[-2:]), tuple(a.shape[-2:])) for b, a in ref]:
            raise ValueError(f"factors[{k}]: (B, A) shapes {shapes} differ from the model's")
    return [(torch.stack([f[i][0] for f in factors]).to(b0.device, b0.dtype),
             torch.stack([f[i][1] for f in factors]).to(a0.device, a0.dtype))
            for i, (b0, a0) in enumerate(ref)]


def unstack_factors(stacked: Stacked) -> list[Factors]:
    """Per module (B (K, ...), A (K, ...)) -> K independent lists of detached (B_k, A_k) copies."""
    k_clients = stacked[0][0].shape[0]
    return [[(b[k].detach().clone(), a[k].detach().clone()) for b, a in stacked]
            for k in range(k_clients)]


def stack_heads(heads: Sequence[dict[str, Tensor]], head: nn.Linear) -> dict[str, Tensor]:
    """K head state dicts -> {"weight": (K, C, d), "bias": (K, C)} on the head's device/dtype."""
    return {name: torch.stack([h[name] for h in heads]).to(p.device, p.dtype)
            for name, p in head.named_parameters()}


def unstack_heads(stacked: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    k_clients = next(iter(stacked.values())).shape[0]
    return [{name: v[k].detach().clone() for name, v in stacked.items()} for k in range(k_clients)]


def stacked_orthogonality_defect(B: Tensor, A: Tensor) -> Tensor:
    """R(B_k, A_k) = ||B_k^T B_k - diag||_F^2 + ||A_k A_k^T - diag||_F^2 for every client k, shape
    (K,): B (K, d_out, r), A (K, r, d_in) (:func:`tsfa.fl.lora.orthogonality_defect` per client)."""
    def off_diagonal_sq(g: Tensor) -> Tensor:
        return (g - torch.diag_embed(g.diagonal(dim1=-2, dim2=-1))).pow(2).sum((-2, -1))

    return off_diagonal_sq(B.mT @ B) + off_diagonal_sq(A @ A.mT)


def stacked_soft_regulariser(stacked: Stacked) -> Tensor:
    """sum_m R(B_km, A_km) per client k, shape (K,) (the SOFT regulariser, docs/model.md §5)."""
    return torch.stack([stacked_orthogonality_defect(b, a) for b, a in stacked]).sum(0)


def stacked_soft_select(B: Tensor, A: Tensor, n: int) -> Tensor:
    """SOFT selection for all clients at once: sorted indices (K, n) of each client's n largest
    ||b_i|| ||a_i|| (:func:`tsfa.fl.compress.soft_select` per row; no SVD, no B @ A)."""
    importance = torch.linalg.vector_norm(B, dim=1) * torch.linalg.vector_norm(A, dim=2)
    return torch.sort(torch.topk(importance, n, dim=1).indices, dim=1).values


def uses_merged_weight(layer: LoRALinear) -> bool:
    """Speed heuristic (both forms are exact): fold client k's LoRA into a per-client weight
    W0 + s B_k A_k when d = min(d_in, d_out) <= 64 or r >= d / 16, else apply it as two thin
    matmuls. Measured (benchmarks/README.md, 2 threads): at d = 64 (the embedded task's ViT)
    merged is 8-10% faster for every r (r = 1, 2 included); at d = 384 thin is 2-4% faster for
    r <= 8 and equal at r = 32."""
    d = min(layer.base.in_features, layer.base.out_features)
    return d <= 64 or 16 * layer.r >= d


class _Forward:
    """The ViT forward pass with per-client LoRA factors and heads on a leading client axis."""

    def __init__(self, model: ViT, stacked: Stacked, head: dict[str, Tensor]) -> None:
        self.model = model
        self.lora = {id(m): (b, a) for (_, m), (b, a) in zip(lora_modules(model), stacked,
                                                              strict=True)}
        self.head = head

    def linear(self, layer: nn.Module, x: Tensor, k_clients: int) -> Tensor:
        """``layer(x)``, x (N, ..., d_in), with client k's LoRA on rows k N / K .. (k + 1) N / K - 1:
        W0 x + bias + s B_k A_k x (docs/model.md §1)."""
        if not isinstance(layer, LoRALinear):
            return layer(x)
        b, a = self.lora[id(layer)]
        xk = x.reshape(k_clients, -1, x.shape[-1])
        base = layer.base
        if uses_merged_weight(layer):
            w = base.weight + layer.scaling * torch.bmm(b, a)  # (K, d_out, d_in)
            y = torch.bmm(xk, w.transpose(1, 2)) if base.bias is None else torch.baddbmm(
                base.bias, xk, w.transpose(1, 2))
            return y.view(*x.shape[:-1], -1)
        y = base(x)
        delta = torch.bmm(torch.bmm(xk, a.transpose(1, 2)), b.transpose(1, 2))
        return y + layer.scaling * delta.view(y.shape)

    def attention(self, attn: nn.Module, h: Tensor, k_clients: int, cls_only: bool) -> Tensor:
        """Multi-head self-attention of every sample of every client (one merged batch). On the CPU
        written out, softmax(q k^T / sqrt(d_h)) v (faster than torch's fused CPU kernel at 17 and
        197 tokens, measured), elsewhere ``scaled_dot_product_attention``.
        ``cls_only``: queries (and outputs) for token 0 only; on the CPU the one query's scores and
        output are then element-wise products and sums (a batched matmul with an inner or outer
        dimension of 1 is slow there: +6% client-steps/s on one thread, benchmarks/README.md)."""
        n, _, d = h.shape
        hq = h[:, :1] if cls_only else h
        heads, d_h = attn.heads, d // attn.heads
        q, k, v = (self.linear(layer, z, k_clients).view(n, z.shape[1], heads, d_h)
                   for layer, z in ((attn.query, hq), (attn.key, h), (attn.value, h)))
        if cls_only and h.device.type == "cpu":  # q (n, 1, heads, d_h), k and v (n, T, heads, d_h)
            p = torch.softmax((q * (1.0 / math.sqrt(d_h)) * k).sum(-1), dim=1)  # (n, t, heads)
            y = (p.unsqueeze(-1) * v).sum(1)  # (n, heads, d_h)
            return self.linear(attn.out, y.reshape(n, 1, d), k_clients)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (n, heads, tokens, d_h)
        if q.device.type == "cpu":
            scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
            y = torch.softmax(scores, dim=-1) @ v
        else:  # fused kernels: no (N, heads, T, T) score tensor kept for the backward pass
            y = F.scaled_dot_product_attention(q, k, v)
        return self.linear(attn.out, y.transpose(1, 2).reshape(n, hq.shape[1], d), k_clients)

    def block(self, blk: nn.Module, z: Tensor, k_clients: int, cls_only: bool) -> Tensor:
        z = (z[:, :1] if cls_only else z) + self.attention(blk.attn, blk.norm1(z), k_clients,
                                                           cls_only)
        h = blk.norm2(z)
        mlp = blk.mlp
        return z + self.linear(mlp.fc2, F.gelu(self.linear(mlp.fc1, h, k_clients)), k_clients)

    def __call__(self, x: Tensor) -> Tensor:
        """x (K, n, C, H, W) -> logits (K, n, num_classes)."""
        m, (k_clients, n) = self.model, x.shape[:2]
        z = m.patch_embed(x.flatten(0, 1)).flatten(2).transpose(1, 2)
        z = torch.cat([m.cls_token.expand(z.shape[0], -1, -1), z], dim=1) + m.pos_embed
        for i, blk in enumerate(m.blocks):
            z = self.block(blk, z, k_clients, cls_only=i == len(m.blocks) - 1)
        feats = m.norm(z[:, 0]).view(k_clients, n, -1)
        return torch.baddbmm(self.head["bias"].unsqueeze(1), feats,
                             self.head["weight"].transpose(1, 2))


def draw_minibatches(data: Sequence[tuple[Tensor, Tensor]], rngs: Sequence[np.random.Generator],
                     batch: int, device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    """One local step's minibatch of every client: x (K, n, ...), y (K, n) on ``device`` and the
    sizes n_k. Client k draws ``rng_k.integers(N_k, size=n_k)``, n_k = min(batch, N_k), as the
    sequential path does; rows n_k .. n - 1 (n = max n_k) repeat its first sample (padding)."""
    sizes = [min(batch, len(y)) for _, y in data]
    n = max(sizes)
    idx = np.empty((len(data), n), dtype=np.int64)
    for k, ((_, y), rng, size) in enumerate(zip(data, rngs, sizes, strict=True)):
        idx[k, :size] = rng.integers(len(y), size=size)
        idx[k, size:] = idx[k, 0]
    where = {y.device for _, y in data}  # one host-to-device copy of the indices per step
    index = torch.from_numpy(idx).to(where.pop() if len(where) == 1 else "cpu")
    xb = torch.stack([xk[index[k].to(xk.device)].to(device) for k, (xk, _) in enumerate(data)])
    yb = torch.stack([yk[index[k].to(yk.device)].to(device) for k, (_, yk) in enumerate(data)])
    return xb, yb, sizes


def task_losses(logits: Tensor, y: Tensor, sizes: Sequence[int]) -> Tensor:
    """Each client's mean cross-entropy over its n_k real samples, shape (K,); logits (K, n, C),
    y (K, n); padded rows (j >= n_k) get weight 0."""
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    n = y.shape[1]
    if min(sizes) == n:
        return ce.mean(1)
    n_k = torch.tensor(sizes, device=ce.device)
    mask = torch.arange(n, device=ce.device) < n_k[:, None]
    return (ce * mask).sum(1) / n_k.to(ce.dtype)


def _optimizer(params: list[Tensor], optimizer: str, lr: float) -> torch.optim.Optimizer:
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer = {optimizer!r} is invalid; allowed: adamw, sgd")


def batched_local_train(model: ViT, factors: Sequence[Factors], heads: Sequence[dict[str, Tensor]],
                        data: Sequence[tuple[Tensor, Tensor]], rngs: Sequence[np.random.Generator],
                        steps: int, batch: int, lr: float, optimizer: str, zeta: float,
                        precision: str = "fp32", frozen: tuple[str, ...] = (),
                        ) -> tuple[list[Factors], list[dict[str, Tensor]], list[float]]:
    """K clients' local training at once; for each k the same as

        set_factors(model, factors[k]); set_head_state(model, heads[k])
        loss_k = local_train(model, *data[k], steps, batch, lr, optimizer, zeta, rngs[k])
        -> get_factors(model), get_head_state(model), loss_k

    but without touching the model's own LoRA factors or head (the backbone is only read).
    ``data[k]``: client k's (x (N_k, C, H, W), y (N_k,)) on any device (minibatches are moved to
    the model's); ``rngs[k]`` advances exactly as in the sequential path. ``precision``: "fp32"
    (the model's dtype) or "bf16" (autocast for the forward pass); ``frozen``: factors not trained
    (("A",): FFA-LoRA, A keeps its value and gets no gradient). Returns per client the trained
    factors, head state and last task loss (nan if ``steps`` = 0 or on the meta device).
    """
    if not isinstance(model, ViT):
        raise TypeError(f"model: a tsfa.fl.vit.ViT with LoRA applied, got {type(model).__name__}")
    k_clients = len(factors)
    if not k_clients or not len(heads) == len(data) == len(rngs) == k_clients:
        raise ValueError(f"factors, heads, data, rngs: {len(factors)}, {len(heads)}, {len(data)}, "
                         f"{len(rngs)} entries; allowed: the same number K >= 1 of clients")
    device = model.head.weight.device
    names = frozen_names(frozen)
    stacked = [(b.requires_grad_("lora_B" not in names), a.requires_grad_("lora_A" not in names))
               for b, a in stack_factors(factors, model)]
    head = {k: v.requires_grad_() for k, v in stack_heads(heads, model.head).items()}
    params = [p for pair in stacked for p in pair if p.requires_grad] + list(head.values())
    opt = _optimizer(params, optimizer, lr)
    forward = _Forward(model, stacked, head)
    model.train()
    task = None
    for _ in range(steps):
        x, y, sizes = draw_minibatches(data, rngs, batch, device)
        with autocast(precision, device):
            logits = forward(x)
        task = task_losses(logits.to(head["weight"].dtype), y, sizes)  # in the model's dtype
        loss = task.sum() + zeta * stacked_soft_regulariser(stacked).sum() if zeta > 0 else task.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    losses = ([math.nan] * k_clients if task is None or task.device.type == "meta"
              else task.detach().cpu().tolist())
    return unstack_factors(stacked), unstack_heads(head), losses


def sequential_local_train(model: ViT, factors: Sequence[Factors],
                           heads: Sequence[dict[str, Tensor]], data: Sequence[tuple[Tensor, Tensor]],
                           rngs: Sequence[np.random.Generator], steps: int, batch: int, lr: float,
                           optimizer: str, zeta: float, precision: str = "fp32",
                           frozen: tuple[str, ...] = (),
                           ) -> tuple[list[Factors], list[dict[str, Tensor]], list[float]]:
    """The reference: ``local_train`` for each client in turn on ``model`` (same arguments and
    results as :func:`batched_local_train`; leaves the last client's state in the model)."""
    local_train = _reference_local_train()
    out = []
    for f, h, (x, y), rng in zip(factors, heads, data, rngs, strict=True):
        set_factors(model, f)
        set_head_state(model, h)
        loss = local_train(model, x, y, steps, batch, lr, optimizer, zeta, rng, precision,
                           tuple(frozen))
        out.append((get_factors(model), get_head_state(model), loss))
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def _reference_local_train():
    from tsfa.fl.client import local_train  # the client side (imported late: no cycle)

    return local_train


__all__ = ["Stacked", "batched_local_train", "sequential_local_train", "draw_minibatches",
           "task_losses", "uses_merged_weight", "stack_factors", "unstack_factors", "stack_heads",
           "unstack_heads", "stacked_orthogonality_defect", "stacked_soft_regulariser",
           "stacked_soft_select"]

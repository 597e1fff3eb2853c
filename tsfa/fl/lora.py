"""LoRA adapters in PEFT vocabulary and the SOFT orthogonality regulariser (docs/model.md §1, §5).

A wrapped projection computes  W x = W0 x + (lora_alpha / r) B A x  with
``lora_B`` = B in R^{d_out x r} (zero init) and ``lora_A`` = A in R^{r x d_in}
(Kaiming-uniform init with a = sqrt(5), as PEFT). Columns b_i of B and rows a_i of A are the
rank components: B A = sum_i b_i a_i^T.

Factors exchanged with the federated loop are ``list[tuple[B, A]]`` in a fixed module order
(``lora_modules``: depth-first ``named_modules`` order, e.g. blocks.0.attn.query,
blocks.0.attn.value, blocks.1.attn.query, ...). Note that the factors do not include ``scaling``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Factors = list[tuple[torch.Tensor, torch.Tensor]]  # per module: (B (d_out, r), A (r, d_in))


class LoRALinear(nn.Module):
    """``base(x) + scaling * (x @ lora_A^T @ lora_B^T)``, scaling = lora_alpha / r (docs/model.md §1).

    The base layer is frozen. ``merge()`` folds the adapter into ``base.weight`` (then the
    forward pass is the base layer alone); ``unmerge()`` undoes it.
    """

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r = {r!r} is invalid; allowed: an integer >= 1")
        if not lora_alpha > 0:
            raise ValueError(f"lora_alpha = {lora_alpha!r} is invalid; allowed: a number > 0")
        self.base = base
        base.requires_grad_(False)
        self.r = r
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / r
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, shape (d_out, d_in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged_weight(self) -> torch.Tensor:
        """W0 + scaling * B A (the base weight if already merged)."""
        w = self.base.weight
        return w if self.merged else w + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, merged={self.merged}"


def apply_lora(model: nn.Module, r: int, lora_alpha: float,
               targets: Sequence[str] = ("query", "value"), head: str = "head",
               generator: torch.Generator | None = None) -> list[str]:
    """Freeze ``model``, wrap every ``nn.Linear`` whose attribute name is in ``targets`` with
    ``LoRALinear`` (in place) and keep the ``head`` module trainable. Returns the wrapped names
    in the fixed module order. ViT-Base: 24 modules (docs/model.md §1)."""
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, r, lora_alpha, generator))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named one of {tuple(targets)} in the model")
    getattr(model, head).requires_grad_(True)
    return wrapped


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, LoRALinear) pairs in the fixed module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def get_factors(model: nn.Module, dtype: torch.dtype | None = None) -> Factors:
    """Detached copies of (lora_B, lora_A) per module, optionally cast (e.g. float64)."""
    return [(m.lora_B.detach().clone().to(dtype or m.lora_B.dtype),
             m.lora_A.detach().clone().to(dtype or m.lora_A.dtype)) for _, m in lora_modules(model)]


@torch.no_grad()
def set_factors(model: nn.Module, factors: Factors) -> None:
    """Copy (B, A) per module into the model (cast to the parameters' dtype)."""
    modules = lora_modules(model)
    if len(modules) != len(factors):
        raise ValueError(f"{len(factors)} factor pairs for {len(modules)} LoRA modules")
    for (name, m), (b, a) in zip(modules, factors, strict=True):
        if b.shape != m.lora_B.shape or a.shape != m.lora_A.shape:
            raise ValueError(f"{name}: got B {tuple(b.shape)}, A {tuple(a.shape)}; expected "
                             f"{tuple(m.lora_B.shape)}, {tuple(m.lora_A.shape)}")
        m.lora_B.copy_(b)
        m.lora_A.copy_(a)


def get_head_state(model: nn.Module, head: str = "head") -> dict[str, torch.Tensor]:
    """Detached copy of the head's state dict (sent in full, docs/model.md §1)."""
    return {k: v.detach().clone() for k, v in getattr(model, head).state_dict().items()}


@torch.no_grad()
def set_head_state(model: nn.Module, state: dict[str, torch.Tensor], head: str = "head") -> None:
    getattr(model, head).load_state_dict(state)


def orthogonality_defect(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """R(B, A) = ||B^T B - diag(B^T B)||_F^2 + ||A A^T - diag(A A^T)||_F^2 (docs/model.md §5).

    B: (d_out, r), A: (r, d_in). Zero iff the columns of B and the rows of A are mutually
    orthogonal. Differentiable; a scalar tensor.
    """
    gb = B.T @ B
    ga = A @ A.T
    off_b = gb - torch.diag(torch.diagonal(gb))
    off_a = ga - torch.diag(torch.diagonal(ga))
    return off_b.pow(2).sum() + off_a.pow(2).sum()


def soft_regulariser(model: nn.Module) -> torch.Tensor:
    """sum_m R(B_m, A_m) over all LoRA modules; weight it by zeta in the local loss (§5)."""
    terms = [orthogonality_defect(m.lora_B, m.lora_A) for _, m in lora_modules(model)]
    return torch.stack(terms).sum()


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) with requires_grad, e.g. for the optimiser."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def frozen_names(frozen: tuple[str, ...]) -> set[str]:
    """Parameter names (``lora_A``, ``lora_B``) of the factors in ``frozen``, a subset of
    ("A", "B"): the factors a method does not train (FFA-LoRA: ("A",))."""
    if isinstance(frozen, str) or not set(frozen) <= {"A", "B"}:
        raise ValueError(f"frozen = {frozen!r} is invalid; allowed: a subset of ('A', 'B')")
    return {f"lora_{f}" for f in frozen}


__all__ = ["frozen_names", "Factors", "LoRALinear", "apply_lora", "lora_modules", "get_factors",
           "set_factors", "get_head_state", "set_head_state", "orthogonality_defect", "soft_regulariser",
           "trainable_parameters"]

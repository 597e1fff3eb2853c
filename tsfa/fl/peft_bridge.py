"""A user's PEFT LoRA model in tsfa's federated loop: factors read and written by module name.

PEFT's ``LoraLayer`` (``peft.tuners.lora.layer.Linear``) computes

    base(x) + scaling * lora_B(lora_A(dropout(x))),   lora_A.weight = A (r, d_in),
                                                      lora_B.weight = B (d_out, r),

which is tsfa's ``LoRALinear`` (docs/model.md §1) with the same (B, A) convention and B
zero-initialised. So tsfa's compressors, error feedback, aggregation and covariance metrics,
which all work on ``Factors`` = [(B, A)] per module, run on a PEFT model unchanged once
:class:`PeftLoRA` reads and writes those factors; the controller needs only the module sizes
and head size (:meth:`PeftLoRA.spec_overrides`). ``scaling`` is not part of the factors (PEFT's
``use_rslora`` changes it, not them).

Modules come in ``model.named_modules()`` order (depth-first, as tsfa's ``lora_modules``), under
their full PEFT names (e.g. ``base_model.model.vit.layers.0.attention.q_proj``). The head sent
in full each round is PEFT's trainable ``modules_to_save`` copy (e.g. ``classifier``), or the
module named by ``head``. Adapter variants whose update is not ``B A`` (DoRA, a LoRA bias,
convolution LoRA) are rejected with their module's name. Needs ``peft`` (``tsfa[interop]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tsfa.fl.lora import Factors, orthogonality_defect


def _peft():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:
        raise ImportError("PEFT models need peft: pip install 'tsfa[interop]'") from None
    return LoraLayer, ModulesToSaveWrapper


@dataclass(frozen=True)
class PeftLoRA:
    """tsfa's LoRA access (``get_factors``, ``set_factors``, head state, SOFT regulariser) for a
    PEFT model (``PeftModel`` or ``LoraModel``) and one adapter.

    adapter: the PEFT adapter name; head: module name (as in ``named_modules``) of a head to
    send in full when the model has no ``modules_to_save``; None: none.
    """

    adapter: str = "default"
    head: str | None = None

    def modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, LoraLayer) holding this adapter, in module order; unsupported variants raise."""
        lora_layer, _ = _peft()
        out = [(n, m) for n, m in model.named_modules()
               if isinstance(m, lora_layer) and self.adapter in m.lora_A]
        if not out:
            raise ValueError(f"no PEFT LoRA layer with adapter {self.adapter!r} in the model")
        for name, m in out:
            why = [what for what, flag in (
                ("DoRA", m.use_dora.get(self.adapter, False)),
                ("a LoRA bias", getattr(m, "lora_bias", {}).get(self.adapter, False)),
                ("a LoRA variant", self.adapter in getattr(m, "lora_variant", {})),
                ("a non-linear layer", m.lora_A[self.adapter].weight.dim() != 2)) if flag]
            if why:
                raise ValueError(f"{name}: adapter {self.adapter!r} uses {why[0]}; tsfa's "
                                 "compressors need plain LoRA (update B A)")
        return out

    def names(self, model: nn.Module) -> list[str]:
        return [n for n, _ in self.modules(model)]

    def _pairs(self, model: nn.Module):
        return [(n, m.lora_B[self.adapter].weight, m.lora_A[self.adapter].weight)
                for n, m in self.modules(model)]

    def get_factors(self, model: nn.Module, dtype: torch.dtype | None = None) -> Factors:
        """Detached copies of (B (d_out, r), A (r, d_in)) per module, optionally cast."""
        return [(b.detach().clone().to(dtype or b.dtype), a.detach().clone().to(dtype or a.dtype))
                for _, b, a in self._pairs(model)]

    @torch.no_grad()
    def set_factors(self, model: nn.Module, factors: Factors) -> None:
        """Copy (B, A) per module into the adapter (cast to its dtype); shapes must match."""
        pairs = self._pairs(model)
        if len(pairs) != len(factors):
            raise ValueError(f"{len(factors)} factor pairs for {len(pairs)} LoRA modules")
        for (name, b0, a0), (b, a) in zip(pairs, factors, strict=True):
            if b.shape != b0.shape or a.shape != a0.shape:
                raise ValueError(f"{name}: got B {tuple(b.shape)}, A {tuple(a.shape)}; expected "
                                 f"{tuple(b0.shape)}, {tuple(a0.shape)}")
            b0.copy_(b)
            a0.copy_(a)

    def head_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of the head: PEFT's trainable modules_to_save copies, or ``head``."""
        _, wrapper = _peft()
        found = [(n, m.modules_to_save[self.adapter]) for n, m in model.named_modules()
                 if isinstance(m, wrapper) and self.adapter in m.modules_to_save]
        if not found and self.head is not None:
            found = [(self.head, model.get_submodule(self.head))]
        return found

    def get_head_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Detached copy of the head's tensors, keyed ``<module>.<tensor>`` ({} without head)."""
        return {f"{n}.{k}": v.detach().clone() for n, m in self.head_modules(model)
                for k, v in m.state_dict().items()}

    @torch.no_grad()
    def set_head_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        for n, m in self.head_modules(model):
            m.load_state_dict({k: state[f"{n}.{k}"] for k in m.state_dict()})

    def soft_regulariser(self, model: nn.Module) -> torch.Tensor:
        """sum_m R(B_m, A_m) over the adapter's modules (docs/model.md §5); differentiable."""
        return torch.stack([orthogonality_defect(b, a) for _, b, a in self._pairs(model)]).sum()

    def rank(self, model: nn.Module) -> int:
        """The adapter's rank r (the same in every module, as tsfa's payload model assumes)."""
        ranks = {a.shape[0] for _, _, a in self._pairs(model)}
        if len(ranks) != 1:
            raise ValueError(f"ranks {sorted(ranks)} differ between modules; tsfa needs one rank")
        return ranks.pop()

    def spec_overrides(self, model: nn.Module) -> dict:
        """Dotted SystemSpec keys (``SystemSpec.replace(**...)``) describing the model's LoRA
        payload: module count, d_in, d_out (equal for every module), head values, lora_alpha."""
        mods = self.modules(model)
        dims = {(m.lora_B[self.adapter].weight.shape[0], m.lora_A[self.adapter].weight.shape[1])
                for _, m in mods}
        alphas = {float(m.lora_alpha[self.adapter]) for _, m in mods}
        if len(dims) != 1 or len(alphas) != 1:
            raise ValueError(f"(d_out, d_in) {sorted(dims)} / lora_alpha {sorted(alphas)} differ "
                             "between modules; tsfa's system spec describes equal modules")
        (d_out, d_in), = dims
        head = sum(v.numel() for v in self.get_head_state(model).values())
        return {"lora.n_modules": len(mods), "lora.d_in": int(d_in), "lora.d_out": int(d_out),
                "lora.head_params": int(head), "lora.lora_alpha": alphas.pop()}


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) with requires_grad (PEFT leaves the factors and modules_to_save)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


__all__ = ["PeftLoRA", "trainable_parameters"]

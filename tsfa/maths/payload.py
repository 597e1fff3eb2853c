"""One payload model: the exact bits of one client upload, for every method (docs/model.md §1, §6).

Pure integer arithmetic (numpy for vectorised ratios). The compressors of :mod:`tsfa.fl.compress`
call :func:`module_plan` to decide how many values they keep and count their index bits with
:func:`component_index_bits` / :func:`element_index_bits`, so the bits the controller plans with
(:class:`PayloadModel`) and the bits counted on the real upload are the same numbers by
construction.

Each registered compressor (:data:`tsfa.config.registry.COMPRESSORS`) names its
:class:`PayloadForm`; the built-in forms, per LoRA module with ``B`` (d_out, r), ``A`` (r, d_in),
values of q_b bits, ratio rho and ``n = max(1, ceil(rho r))`` (:func:`kept_components`):

* ``soft``: n rank components (n columns of B, n rows of A) and n rank indices of ceil(log2 r)
  bits, none when n = r (all components sent; the server knows n from rho, so the indices are
  implied);
* ``tlora``: element top-k of each factor, k_B = n d_out and k_A = n d_in values (as many values as
  SOFT); the positions of each factor are coded by the cheaper of k ceil(log2 numel) element
  indices and a numel-bit bitmap, none when k = numel; the choice is a function of (k, numel),
  both known to the server, so no flag bit is sent;
* ``rlora``: k_B, k_A as TLoRA at random positions drawn from a seed the server shares: no
  index bits;
* ``slora``, ``svd``: n singular triplets sent as factors U_n sqrt(S_n), sqrt(S_n) V_n^T:
  n (d_out + d_in) values, no index bits;
* ``ilora``: the full factors r (d_out + d_in) values whatever rho (the ideal reference);
* ``ffa``: FFA-LoRA, A frozen: n columns of B and their rank indices (as SOFT, without rows of A).

``equal_bits``: every method except ``ilora`` fits its values and index bits into SOFT's bits at
the same rho, module by module (SOFT's index bits split between the factors, B the smaller half):
element methods keep the most values whose cost fits each factor's share (one more value and
its index would exceed it), component methods the most components that fit the module's bits.
The head (``head_params`` values) is always sent in full at q_b bits. The upload protocol
("update" or "factor") does not change the count: the same entries are sent either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from numpy.typing import ArrayLike

from tsfa.config.registry import COMPRESSORS

METHODS = COMPRESSORS  # the registered compressors (iterable names)


def kept_components(rank: int, rho: ArrayLike) -> np.ndarray:
    """Rank components sent per module: ``n = max(1, ceil(rho r))`` (docs/model.md §1).

    A tolerance of 1e-9 guards ``ceil`` against round-off (``rho = 3/8`` at ``r = 8`` gives 3).
    """
    rho = np.asarray(rho, dtype=float)
    n = np.ceil(rho * rank - 1e-9)
    return np.clip(n, 1, rank).astype(int)


def index_bits(count: int) -> int:
    """Bits to name one of ``count`` items: ``ceil(log2 count)`` (0 for one item); exact for any
    integer (``(count - 1).bit_length()``, no floating-point log)."""
    return (int(count) - 1).bit_length()


def component_index_bits(n: int, rank: int) -> int:
    """Rank indices of n of r components: ``n ceil(log2 r)`` bits, 0 when n = r (all sent)."""
    return 0 if n >= rank else int(n) * index_bits(rank)


def element_index_bits(k: int, numel: int) -> int:
    """Positions of k of numel entries: ``min(k ceil(log2 numel), numel)`` bits (element indices
    or a bitmap, whichever is cheaper), 0 when k is 0 or numel (nothing or everything sent)."""
    if k <= 0 or k >= numel:
        return 0
    return min(int(k) * index_bits(numel), int(numel))


def fit_elements(budget_bits: int, numel: int, value_bits: int, indexed: bool = True) -> int:
    """Most entries k <= numel of one factor whose values and positions fit ``budget_bits``.

    Positions cost :func:`element_index_bits` when ``indexed`` (TLoRA), nothing otherwise (RLoRA).
    The cost k q + min(k c, numel) of k < numel entries is the minimum of two increasing lines,
    so the k that fit are those below either line's limit.
    """
    if numel * value_bits <= budget_bits:
        return int(numel)
    if not indexed:
        return int(budget_bits // value_bits)
    c = index_bits(numel)
    k = max(budget_bits // (value_bits + c), (budget_bits - numel) // value_bits, 0)
    return int(min(k, numel - 1))


def full_factor_bits(rank: ArrayLike, params_per_rank: int, bits_per_param: int) -> np.ndarray:
    """``S_full(r) = q_b r sum_m (d_in^m + d_out^m)`` [bits] (docs/model.md §1).

    ``params_per_rank = sum_m (d_in^m + d_out^m)``; 36,864 for ViT-Base query+value (24 x 1536).
    """
    return bits_per_param * np.asarray(rank, dtype=float) * params_per_rank


@dataclass(frozen=True)
class ModulePlan:
    """What one upload carries for one module: ``n`` rank components (0 for element methods),
    ``values_B`` and ``values_A`` values, and ``index_bits`` bits of positions."""

    n: int
    values_B: int
    values_A: int
    index_bits: int

    def bits(self, value_bits: int) -> int:
        """Bits of this module on the air: q_b (values_B + values_A) + index bits."""
        return value_bits * (self.values_B + self.values_A) + self.index_bits


@dataclass(frozen=True)
class PayloadForm:
    """How one method's upload of one module grows with its ratio: a compressor's payload plan
    (the ``payload`` of its :class:`tsfa.config.registry.CompressorEntry`).

    ``plan(n, rank, d_out, d_in) -> ModulePlan``: the entries sent at ``n`` components' worth
    (n = :func:`kept_components`); ``unit`` says how the method scales and how ``equal_bits``
    fits it into SOFT's bits: ``"component"`` (whole rank components: the most that fit),
    ``"element"`` (single entries of each factor: each factor's share of SOFT's bits, positions
    coded when ``indexed``, else drawn from a seed the server shares) or ``"all"`` (everything,
    whatever rho: the ideal reference).
    """

    plan: Callable[[int, int, int, int], ModulePlan]
    unit: str = "component"
    indexed: bool = True

    def __post_init__(self):
        if self.unit not in ("component", "element", "all"):
            raise ValueError(f"PayloadForm.unit = {self.unit!r}: must be one of component, "
                             "element, all")


def _soft(n: int, rank: int, d_out: int, d_in: int) -> ModulePlan:
    return ModulePlan(n, n * d_out, n * d_in, component_index_bits(n, rank))


def _elements(k_b: int, k_a: int, rank: int, d_out: int, d_in: int, indexed: bool) -> ModulePlan:
    idx = (element_index_bits(k_b, d_out * rank) + element_index_bits(k_a, rank * d_in)
           if indexed else 0)
    return ModulePlan(0, k_b, k_a, idx)


#: SOFT: n rank components (columns of B, rows of A) and their rank indices.
COMPONENTS = PayloadForm(_soft)
#: FFA-LoRA: n columns of B and their rank indices (A frozen, never sent).
B_COMPONENTS = PayloadForm(lambda n, r, o, i: ModulePlan(n, n * o, 0, component_index_bits(n, r)))
#: SLoRA, SVD: n singular triplets sent as factors, no indices.
TRIPLETS = PayloadForm(lambda n, r, o, i: ModulePlan(n, n * o, n * i, 0))
#: TLoRA: n d_out and n d_in entries of the factors at coded positions.
TOP_ELEMENTS = PayloadForm(lambda n, r, o, i: _elements(n * o, n * i, r, o, i, True), "element")
#: RLoRA: as TLoRA at positions drawn from a shared seed (no index bits).
SEEDED_ELEMENTS = PayloadForm(lambda n, r, o, i: _elements(n * o, n * i, r, o, i, False),
                              "element", indexed=False)
#: ILoRA: the full factors whatever rho.
FULL = PayloadForm(lambda n, r, o, i: ModulePlan(r, r * o, r * i, 0), "all")


def payload_form(method: str) -> PayloadForm:
    """The registered payload plan of ``method`` (:data:`tsfa.config.registry.COMPRESSORS`)."""
    return COMPRESSORS.load(method, "payload", PayloadForm, instance=True)


def _equal_bits(form: PayloadForm, n: int, rank: int, d_out: int, d_in: int,
                value_bits: int) -> ModulePlan:
    """``form`` fitted into SOFT's bits at n components (module docstring, ``equal_bits``)."""
    ref = _soft(n, rank, d_out, d_in)
    budget = ref.bits(value_bits)
    if form.unit == "element":
        share_b = value_bits * ref.values_B + ref.index_bits // 2
        k_b = fit_elements(share_b, d_out * rank, value_bits, form.indexed)
        k_a = fit_elements(budget - share_b, rank * d_in, value_bits, form.indexed)
        return _elements(k_b, k_a, rank, d_out, d_in, form.indexed)
    fits = [m for m in range(1, rank + 1) if form.plan(m, rank, d_out, d_in).bits(value_bits)
            <= budget]
    return form.plan(max(fits, default=1), rank, d_out, d_in)


@lru_cache(maxsize=65536)
def _plan(form: PayloadForm, n: int, rank: int, d_out: int, d_in: int, value_bits: int,
          equal_bits: bool) -> ModulePlan:
    if form.unit == "all":
        return form.plan(rank, rank, d_out, d_in)
    if not equal_bits:
        return form.plan(n, rank, d_out, d_in)
    return _equal_bits(form, n, rank, d_out, d_in, value_bits)


def module_plan(method: str, rho: float, rank: int, d_out: int, d_in: int, value_bits: int = 32,
                equal_bits: bool = False) -> ModulePlan:
    """The entries ``method`` sends for one module (d_out, d_in) at rank r and ratio rho (see the
    module docstring). The compressors and :class:`PayloadModel` both call this."""
    n = int(kept_components(rank, rho))
    return _plan(payload_form(method), n, int(rank), int(d_out), int(d_in), int(value_bits),
                 bool(equal_bits))


@dataclass(frozen=True)
class PayloadModel:
    """Bits of one upload of ``method`` (LoRA part plus head) as a function of rho.

    ``module_shapes``: (d_out, d_in) per LoRA module; ``head_params``: head values sent in full;
    ``value_bits``: q_b, bits per value on the air (the compressors send 16-bit values as bf16 or
    fp16, 32 as float32, 64 as float64); ``equal_bits``: fit every method into SOFT's bits.
    """

    method: str
    rank: int
    module_shapes: tuple[tuple[int, int], ...]
    head_params: int
    value_bits: int = 32
    equal_bits: bool = False

    def __post_init__(self):
        payload_form(self.method)  # refuses an unregistered method, naming the allowed ones
        shapes = tuple((int(o), int(i)) for o, i in self.module_shapes)
        if not shapes or self.rank < 1 or self.rank > min(min(s) for s in shapes):
            raise ValueError(f"rank = {self.rank}: must be between 1 and the smallest module "
                             f"dimension of {shapes}")
        object.__setattr__(self, "module_shapes", shapes)

    @classmethod
    def from_spec(cls, spec, method: str = "soft", rank: int = 8,
                  equal_bits: bool = False) -> PayloadModel:
        """From a SystemSpec's ``lora`` section (n_modules modules of d_out x d_in, head_params,
        bits_per_param) at ``rank``."""
        lo = spec.lora
        return cls(method, int(rank), ((lo.d_out, lo.d_in),) * lo.n_modules, lo.head_params,
                   lo.bits_per_param, equal_bits)

    def module_plans(self, rho: float) -> tuple[ModulePlan, ...]:
        """One :class:`ModulePlan` per module at ratio rho."""
        return tuple(module_plan(self.method, rho, self.rank, o, i, self.value_bits,
                                 self.equal_bits) for o, i in self.module_shapes)

    def lora_bits(self, rho: float) -> int:
        """Bits of the LoRA part at ratio rho (scalar rho)."""
        counts = Counter(self.module_shapes)
        return sum(c * module_plan(self.method, rho, self.rank, o, i, self.value_bits,
                                   self.equal_bits).bits(self.value_bits)
                   for (o, i), c in counts.items())

    @property
    def head_bits(self) -> int:
        """S_head = q_b head_params: the head, sent in full every round."""
        return self.value_bits * self.head_params

    def bits(self, rho: ArrayLike):
        """Exact bits of one upload at rho: LoRA part + head (int, or an int array for arrays)."""
        arr = np.asarray(rho, dtype=float)
        if arr.ndim == 0:
            return self.lora_bits(float(arr)) + self.head_bits
        uniq, inv = np.unique(arr, return_inverse=True)
        vals = np.array([self.lora_bits(float(u)) for u in uniq], dtype=np.int64)
        return vals[inv].reshape(arr.shape) + self.head_bits

    def ratios(self) -> np.ndarray:
        """The ratios at which the count changes: n / r for n = 1..r (ILoRA: 1 only)."""
        if payload_form(self.method).unit == "all":
            return np.ones(1)
        return np.arange(1, self.rank + 1) / self.rank

    @cached_property
    def slope_bits(self) -> float:
        """Slope a of the affine relaxation S(rho) = a rho + S_head used by P2 (docs/model.md §1, §4).

        The smallest a with a rho_n + S_head >= bits(rho_n) at every ratio rho_n = n / r the
        method can run at (:meth:`ratios`): the relaxation never under-plans at those ratios and
        is exact where the per-ratio cost (bits(rho_n) - S_head) / rho_n is largest. For SOFT
        this is r (q_b sum_m (d_in + d_out) + M ceil(log2 r)), exact at every n < r and above
        bits(1) by the M r ceil(log2 r) index bits not sent at rho = 1; for methods without index
        bits (RLoRA, SLoRA, SVD) it is bits(1) - S_head and exact at every n / r; for TLoRA it is
        set by the ratio where indices cost most per value; for ILoRA (always rho = 1) it is
        bits(1) - S_head.
        """
        return float(max((self.lora_bits(float(x))) / x for x in self.ratios()))

    def relaxed_bits(self, rho: ArrayLike) -> np.ndarray:
        """S(rho) = slope_bits rho + head_bits [bits], the continuous payload P2 plans with."""
        return self.slope_bits * np.asarray(rho, dtype=float) + self.head_bits


__all__ = ["METHODS", "PayloadForm", "COMPONENTS", "B_COMPONENTS", "TRIPLETS", "TOP_ELEMENTS",
           "SEEDED_ELEMENTS", "FULL", "payload_form", "kept_components", "index_bits",
           "component_index_bits", "element_index_bits", "fit_elements", "full_factor_bits",
           "ModulePlan", "module_plan", "PayloadModel"]

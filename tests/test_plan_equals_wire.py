"""Plan == wire (issue 10): the bits the controller plans with equal the bits counted on a real
upload, for every method, ratio and value precision (docs/model.md §1, §6)."""

import numpy as np
import pytest
import torch

from tsfa.config.experiment import ExperimentSpec, default_system
from tsfa.config.registry import COMPRESSORS
from tsfa.control.from_spec import make_policy
from tsfa.fl.compress import compressor_for, encode_head, head_bits, payload_bits, wire_dtype
from tsfa.maths.instance import realize
from tsfa.maths.payload import PayloadModel

R = 8
METHODS = tuple(COMPRESSORS)  # every registered compressor


def system(bits: int, fmt: str = "bf16"):
    return default_system().replace(**{
        "lora.n_modules": 3, "lora.d_out": 20, "lora.d_in": 24, "lora.head_params": 50,
        "lora.bits_per_param": bits, "lora.value_dtype": fmt, "lora.rank_candidates": [2, 4, 8]})


def real_upload_bits(spec, exp: ExperimentSpec, rho: float) -> int:
    """Bits counted on a real upload of random float32 factors of the spec's shapes, plus the
    head as sent."""
    torch.set_num_threads(1)
    lo = spec.lora
    gen = torch.Generator().manual_seed(0)
    params = [(torch.randn(lo.d_out, R, generator=gen), torch.randn(R, lo.d_in, generator=gen))
              for _ in range(lo.n_modules)]
    deltas = [(0.1 * torch.randn_like(B), 0.1 * torch.randn_like(A)) for B, A in params]
    c = compressor_for(exp, lo)
    upload, _ = c.update(deltas, c.init(params), params, rho, np.random.default_rng(1))
    head = encode_head({"weight": torch.randn(lo.head_params - 2), "bias": torch.randn(2)},
                       wire_dtype(lo.bits_per_param, lo.value_dtype))
    return payload_bits(upload) + head_bits(head)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rho", [1 / R, 0.3, 1.0])
@pytest.mark.parametrize(("bits", "fmt"), [(16, "bf16"), (16, "fp16"), (32, "bf16")])
@pytest.mark.parametrize("equal_bits", [False, True])
@pytest.mark.parametrize("upload", ["update", "factor"])
def test_planned_bits_equal_counted_bits(method, rho, bits, fmt, equal_bits, upload):
    spec = system(bits, fmt)
    exp = ExperimentSpec(method=method, rank=R, equal_bits=equal_bits, upload=upload)
    payload = PayloadModel.from_spec(spec, method, R, equal_bits)
    assert payload.bits(rho) == real_upload_bits(spec, exp, rho)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [16, 32])
def test_policy_plans_with_the_methods_own_payload(method, bits):
    spec = system(bits)
    inst = realize(spec)
    payload = PayloadModel.from_spec(spec, method, R)
    for kind in ("tsfa", "fixed", "myopic"):
        policy = make_policy(spec, inst, R, kind, payload=payload)
        assert policy.slope_bits == payload.slope_bits and policy.head_bits == payload.head_bits
    default = make_policy(spec, inst, R)
    assert default.slope_bits == PayloadModel.from_spec(spec, "soft", R).slope_bits
    with pytest.raises(ValueError, match="rank"):
        make_policy(spec, inst, 4, payload=payload)

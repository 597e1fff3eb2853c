"""PEFT models in tsfa's federated loop (tsfa.fl.peft_bridge): tsfa's LoRA layer equals PEFT's,
factors read and written by module name, and one SOFT round under the TSFA controller on a
PEFT-wrapped transformers ViT (bits as the payload model predicts, aggregation per rank index)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from tsfa.config.experiment import default_system  # noqa: E402
from tsfa.control.from_spec import make_policy  # noqa: E402
from tsfa.fl import metrics as mx  # noqa: E402
from tsfa.fl.aggregate import aggregate  # noqa: E402
from tsfa.fl.checkpoints import convert_state_dict, vit_config_from_hf  # noqa: E402
from tsfa.fl.compress import head_bits, make_compressor, payload_bits  # noqa: E402
from tsfa.fl.lora import LoRALinear, apply_lora, get_factors, set_factors  # noqa: E402
from tsfa.fl.peft_bridge import PeftLoRA, trainable_parameters  # noqa: E402
from tsfa.fl.tasks import task_from_arrays  # noqa: E402
from tsfa.fl.vit import ViT  # noqa: E402
from tsfa.fl.vit_config import flops_per_sample  # noqa: E402
from tsfa.maths import wireless as wl  # noqa: E402
from tsfa.maths.instance import realize  # noqa: E402

torch.set_num_threads(1)
QV = ["query", "value", "q_proj", "v_proj"]  # transformers 4.x / 5.x names of q and v


class Holder(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.proj = base

    def forward(self, x):
        return self.proj(x)


def test_tsfa_and_peft_lora_layers_agree_in_output_and_gradients():
    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(6, 5).double()
    ours = LoRALinear(nn.Linear(6, 5).double(), r=3, lora_alpha=12)
    ours.base.load_state_dict(base.state_dict())
    theirs = peft.inject_adapter_in_model(
        peft.LoraConfig(r=3, lora_alpha=12, target_modules=["proj"], lora_dropout=0.0),
        Holder(nn.Linear(6, 5).double()))
    theirs.proj.base_layer.load_state_dict(base.state_dict())
    layer = theirs.proj
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # B zero-initialised, as ours
    assert layer.scaling["default"] == ours.scaling == 4.0
    with torch.no_grad():
        B = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        A = torch.randn(3, 6, generator=gen, dtype=torch.float64)
        ours.lora_B.copy_(B)
        ours.lora_A.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
        layer.lora_A["default"].weight.copy_(A)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    y_ours, y_theirs = ours(xs[0]), theirs(xs[1])
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    (y_ours * w).sum().backward()
    (y_theirs * w).sum().backward()
    for g_ours, g_theirs in ((ours.lora_B.grad, layer.lora_B["default"].weight.grad),
                             (ours.lora_A.grad, layer.lora_A["default"].weight.grad),
                             (xs[0].grad, xs[1].grad)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-6)


def small_hf_vit(seed=0, num_labels=4):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 num_labels=num_labels)
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model


def peft_vit(seed=0, r=4):
    """(the backbone's state dict before wrapping, the PEFT model; it wraps the model in place)."""
    model = small_hf_vit(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=QV, lora_dropout=0.0,
                             modules_to_save=["classifier"])
    return state, peft.get_peft_model(model, config)


def test_peft_vit_and_tsfa_vit_agree_with_the_same_factors():
    state, pm = peft_vit(seed=1)
    bridge = PeftLoRA()
    cfg = vit_config_from_hf(pm.config.to_dict())
    ours = ViT(cfg)
    tensors, _ = convert_state_dict(state, cfg, include_head=True)
    ours.load_state_dict(tensors)
    names = apply_lora(ours, r=4, lora_alpha=8)
    assert len(bridge.names(pm)) == len(names) == 4
    assert [n.rsplit(".", 1)[-1] for n in bridge.names(pm)] in (["query", "value"] * 2,
                                                                ["q_proj", "v_proj"] * 2)
    gen = torch.Generator().manual_seed(2)
    factors = [(torch.randn(b.shape, generator=gen), a) for b, a in bridge.get_factors(pm)]
    bridge.set_factors(pm, factors)
    set_factors(ours, bridge.get_factors(pm))
    pm.double()
    ours.double()
    x = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    y_theirs, y_ours = pm(pixel_values=x).logits, ours(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    y_theirs.square().sum().backward()
    y_ours.square().sum().backward()
    for (_, m), (_, ml) in zip(bridge.modules(pm), [(n, ours.get_submodule(n)) for n in names],
                               strict=True):
        torch.testing.assert_close(ml.lora_B.grad, m.lora_B["default"].weight.grad, rtol=1e-6,
                                   atol=1e-6)
        torch.testing.assert_close(ml.lora_A.grad, m.lora_A["default"].weight.grad, rtol=1e-6,
                                   atol=1e-6)


def test_bridge_reads_writes_and_describes_the_model():
    _, pm = peft_vit(seed=3, r=2)
    bridge = PeftLoRA()
    f = bridge.get_factors(pm)
    assert [(b.shape, a.shape) for b, a in f] == [((16, 2), (2, 16))] * 4
    head = bridge.get_head_state(pm)
    assert {k.rsplit(".", 1)[-1] for k in head} == {"weight", "bias"} and len(head) == 2
    assert bridge.spec_overrides(pm) == {"lora.n_modules": 4, "lora.d_in": 16, "lora.d_out": 16,
                                         "lora.head_params": 16 * 4 + 4, "lora.lora_alpha": 4.0}
    assert bridge.rank(pm) == 2
    trainable = {n for n, _ in trainable_parameters(pm)}
    assert len(trainable) == 2 * 4 + 2  # the factors and the head copy
    with pytest.raises(ValueError, match="3 factor pairs"):
        bridge.set_factors(pm, f[:3])
    with pytest.raises(ValueError, match=r"got B \(16, 3\)"):
        bridge.set_factors(pm, [(torch.zeros(16, 3), a) for _, a in f])
    with pytest.raises(ValueError, match="adapter 'other'"):
        PeftLoRA("other").get_factors(pm)
    new_head = {k: torch.ones_like(v) for k, v in head.items()}
    bridge.set_head_state(pm, new_head)
    assert all(torch.equal(v, new_head[k]) for k, v in bridge.get_head_state(pm).items())
    reg = bridge.soft_regulariser(pm)
    assert reg.requires_grad and torch.isclose(reg, sum(
        mx.orthogonality_defect(b, a) for b, a in bridge.get_factors(pm)))


def test_dora_is_rejected_by_module_name():
    model = small_hf_vit()
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=QV, use_dora=True))
    with pytest.raises(ValueError, match=r"(query|q_proj): adapter 'default' uses DoRA"):
        PeftLoRA().get_factors(pm)


def expected_bits(rho: float, r: int, shapes, head_params: int) -> int:
    """The payload model: tsfa.maths.payload.PayloadModel where it exists, else its exact count
    (docs/model.md §1): n = max(1, ceil(rho r)) components of 32-bit values per module plus
    n ceil(log2 r) rank-index bits (none when n = r), the head in full."""
    try:
        from tsfa.maths.payload import PayloadModel
    except ImportError:
        n = max(1, math.ceil(rho * r - 1e-9))
        idx = 0 if n == r else n * (r - 1).bit_length()
        return sum(32 * n * (o + i) + idx for o, i in shapes) + 32 * head_params
    return int(PayloadModel("soft", r, tuple(shapes), head_params).bits(rho))


def sent_index(mu, r: int) -> torch.Tensor:
    """The rank indices a SOFT module upload carries (all r, implied, when everything is sent)."""
    return mu.rank_index if mu.rank_index is not None else torch.arange(r)


def test_one_soft_round_with_the_tsfa_controller_on_a_peft_vit():
    _, pm = peft_vit(seed=4, r=4)
    bridge, r, K = PeftLoRA(), 4, 3
    vit = vit_config_from_hf(pm.config.to_dict())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(72, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 72)
    task = task_from_arrays(x[:60], y[:60], x[60:], y[60:], num_clients=K, alpha=0.5, seed=0,
                            vit=vit)
    spec = default_system().replace(**bridge.spec_overrides(pm), **{
        "clients.num_clients": K, "clients.data_sizes": [len(p) for p in task.parts],
        "compute.flops_per_sample": flops_per_sample(vit), "lora.rank_candidates": [1, 2, 4],
        "control.budget_reference_rank": r, "bound.spectrum_dim": 16})
    inst = realize(spec)
    policy = make_policy(spec, inst, r, "tsfa")
    queues = np.array([0.01, 0.03, 0.1])  # mid-run backlogs [s]: the controller compresses
    gains = inst.mean_gamma_hz * wl.draw_rayleigh_power(np.random.default_rng(1), K)
    decision = policy.decide(queues, gains)
    rho = np.clip(np.nan_to_num(decision.rho, nan=1.0), 1.0 / r, 1.0)
    n_kept = np.maximum(1, np.ceil(rho * r - 1e-9)).astype(int)
    assert len(set(n_kept)) > 1 and n_kept.min() < r, rho  # ratios differ, some components stay

    params, head = bridge.get_factors(pm), bridge.get_head_state(pm)
    compressor = make_compressor("soft")  # with error feedback
    shapes = [tuple(b.shape[:1]) + tuple(a.shape[1:]) for b, a in params]
    xs, ys = task.train.tensors()
    uploads, heads, bits, memories = [], [], [], []
    for k, part in enumerate(task.parts):
        bridge.set_factors(pm, params)
        bridge.set_head_state(pm, head)
        opt = torch.optim.AdamW([p for _, p in trainable_parameters(pm)], lr=1e-2)
        idx = torch.from_numpy(part)
        for _ in range(3):
            loss = F.cross_entropy(pm(pixel_values=xs[idx]).logits, ys[idx])
            loss = loss + 1e-3 * bridge.soft_regulariser(pm)
            opt.zero_grad()
            loss.backward()
            opt.step()
        deltas = [(b1 - b0, a1 - a0) for (b1, a1), (b0, a0)
                  in zip(bridge.get_factors(pm), params, strict=True)]
        upload, memory = compressor.update(deltas, compressor.init(params), params, float(rho[k]),
                                           np.random.default_rng(k))
        h = bridge.get_head_state(pm)
        uploads.append(upload)
        heads.append(h)
        memories.append(memory)
        bits.append(payload_bits(upload) + head_bits(h))
        assert bits[-1] == expected_bits(float(rho[k]), r, shapes, 16 * 4 + 4)
        for mu, (mem_b, _) in zip(upload.modules, memory, strict=True):
            assert mu.B_values.shape == (16, n_kept[k]) and mu.A_values.shape == (n_kept[k], 16)
            assert torch.all(mem_b[:, sent_index(mu, r)] == 0)  # sent columns leave the memory

    p = task.class_histograms()["total"].to_numpy() / 60
    new = aggregate(params, uploads, p)
    for m, (B, A) in enumerate(params):  # per rank index: B_:,i += sum_k p_k [i in I_k] M_k,:,i
        want_b, want_a, senders = B.clone(), A.clone(), np.zeros(r)
        for w, u in zip(p, uploads, strict=True):
            mu = u.modules[m]
            i = sent_index(mu, r)
            want_b[:, i] += float(w) * mu.B_values.to(B.dtype)
            want_a[i, :] += float(w) * mu.A_values.to(A.dtype)
            senders[i.numpy()] += 1
        torch.testing.assert_close(new[m][0], want_b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(new[m][1], want_a, rtol=1e-6, atol=1e-7)
        for i in np.flatnonzero(senders == 0):  # nobody sent component i: unchanged
            torch.testing.assert_close(new[m][0][:, i], B[:, i], rtol=0, atol=0)
    covs, residual = mx.uploaded_covariance(params, uploads, p)
    assert len(covs) == 4 and residual < 1e-6

    bridge.set_factors(pm, new)
    assert all(torch.equal(b, nb) for (b, _), (nb, _) in zip(bridge.get_factors(pm), new,
                                                             strict=True))
    latency = inst.compute_s + np.asarray(bits) / wl.rate_bps(decision.bandwidth_hz, gains)
    assert np.all(policy.update_queues(queues, latency) >= 0)
    with torch.no_grad():
        assert pm(pixel_values=xs[:5]).logits.shape == (5, 4)
    tsfa_model = ViT(vit)  # the same factors fit tsfa's own model of this architecture
    apply_lora(tsfa_model, r=r, lora_alpha=2 * r)
    set_factors(tsfa_model, new)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(get_factors(tsfa_model), new,
                                                           strict=True))


@pytest.mark.slow
def test_interop_doc_examples_run(tmp_path, monkeypatch):
    """docs/interop.md's Python blocks run in order as written (checkpoint, PEFT, own data)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "interop.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/interop.md", "exec"), namespace)  # noqa: S102
    assert namespace["report"].keys_loaded == len(namespace["model"].state_dict()) - 2
    assert len(namespace["result"].rounds) == 2 and (tmp_path / "runs" / "own-data").is_dir()

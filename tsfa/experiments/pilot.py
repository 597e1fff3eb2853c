"""Pilot runs: the statistics the bound needs, measured on the user's task (docs/model.md "Calibration").

A pilot is self-contained (it does not use the federated loop): from a tsfa ViT with LoRA and a
:class:`tsfa.fl.tasks.Task`, it trains the LoRA factors and the head centrally on a fixed sample
of the pooled client data (the *pilot population*, ``pilot_samples`` draws) and, at ``checkpoints``
points of that short trajectory (evenly spread after its first step), measures with torch

* the full-batch gradient g on the population and, after the next optimiser step, again (one
  secant pair for the smoothness L);
* ``minibatches`` minibatch gradients g_b at the run's batch size (sigma^2, G^2);
* each client's gradient g_k on its own data, from two halves so that their sampling noise can be
  removed (zeta_h^2);
* one simulated federated round without compression: every client runs ``local_steps`` steps from
  the checkpoint (a fresh optimiser, as the federated loop does) and the covariance of the
  separately aggregated factors, ||Cov||_F, is measured (tsfa.maths.covariance);

and at the end the singular values of each module's accumulated LoRA update (eps(r)) and the final
population and test losses. Gradients are taken with respect to the adapted weights
W_m = W0_m + (alpha / r) B_m A_m (default; rank-free statistics) or to the factors (B_m, A_m).
:func:`save_pilot` writes a self-describing folder (``config.toml``, ``metadata.json``, CSV tables,
``summary.json``) that ``tsfa calibrate`` reads back with :func:`load_pilot`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from tsfa.config.fields import _f, _Section, section_toml_lines
from tsfa.config.spec import SystemSpec, load_spec
from tsfa.fl.lora import lora_modules, trainable_parameters
from tsfa.fl.server import evaluate
from tsfa.fl.tasks import Task
from tsfa.maths.covariance import factor_covariance
from tsfa.maths.rng import substream

TABLES = ("checkpoints", "minibatches", "clients", "spectrum")
#: Where gradients are taken: wrt each adapted weight W_m = W0_m + (alpha/r) B_m A_m (``product``,
#: independent of the LoRA parameterisation, so the estimates do not depend on the pilot's rank)
#: or wrt the factors (B_m, A_m) themselves (``factors``).
GRADIENT_SPACES = ("product", "factors")


@dataclass(frozen=True)
class PilotConfig(_Section):
    """Hyper-parameters of one pilot run (the LoRA rank is the model's own): validated fields of
    :mod:`tsfa.config.fields` (an error names ``pilot.<field>`` and its range), written to the
    folder's ``[pilot]`` table with their meaning and range (:func:`pilot_toml`)."""

    SECTION = "pilot"

    steps: int = _f(60, "optimiser steps of the central pilot trajectory", "", 1, kind=int)
    checkpoints: int = _f(4, "points of the trajectory where the statistics are measured", "", 1,
                          kind=int)
    batch_size: int = _f(32, "minibatch size (the run's)", "samples", 1, kind=int)
    learning_rate: float = _f(3e-3, "learning rate of the pilot and the simulated round", "", 0.0,
                              lo_open=True, kind=float)
    optimizer: str = _f("adamw", "optimiser of the pilot and the simulated round",
                        choices=("adamw", "sgd"), kind=str)
    local_steps: int = _f(5, "local steps tau of each client in the simulated round", "", 1,
                          kind=int)
    minibatches: int = _f(32, "minibatch gradients per checkpoint (sigma^2, G^2)", "", 2, kind=int)
    pilot_samples: int = _f(4096, "draws of the pooled client data (the pilot population)",
                            "samples", 2, kind=int)
    client_samples: int = _f(1024, "draws of each client's data (g_k, zeta_h^2; simulated round)",
                             "samples", 2, kind=int)
    test_samples: int = _f(1000, "test samples of the initial and final test loss", "samples", 1,
                           kind=int)
    grad_chunk: int = _f(1024, "samples per forward pass of a full-batch gradient (memory)",
                         "samples", 1, kind=int)
    gradient_space: str = _f("product", "where gradients are taken (GRADIENT_SPACES)",
                             choices=GRADIENT_SPACES, kind=str)
    seed: int = _f(0, "seed of the pilot's random substreams", "", 0, kind=int)


@dataclass(frozen=True, eq=False)
class PilotResult:
    """One pilot: its ``config``, ``context`` (rank, lora_alpha, clients, weights, note), the
    tables of :data:`TABLES` and ``summary`` (initial and final losses)."""

    config: PilotConfig
    context: dict
    checkpoints: pd.DataFrame
    minibatches: pd.DataFrame
    clients: pd.DataFrame
    spectrum: pd.DataFrame
    summary: dict = field(default_factory=dict)
    path: Path | None = None
    system: SystemSpec | None = None  # the user's system, when known (saved as system.toml)
    states: list | None = None  # model state per checkpoint (keep_states=True; not saved)
    population: np.ndarray | None = None  # train indices of the pilot population (not saved)


# --------------------------------------------------------------------------- gradients
def gradient_targets(model, space: str = "product") -> list[torch.Tensor]:
    """The tensors gradients are taken with respect to: each LoRA module's base weight (its
    gradient is that of the adapted weight W_m, ``product``) or its factors (``factors``)."""
    mods = lora_modules(model)
    if not mods:
        raise ValueError("pilot: the model has no LoRA modules (apply tsfa.fl.lora.apply_lora first)")
    if space == "product":
        return [m.base.weight for _, m in mods]
    return [p for _, m in mods for p in (m.lora_B, m.lora_A)]


def current_point(model, space: str = "product") -> torch.Tensor:
    """The point in the gradient space: the LoRA updates (alpha/r) B_m A_m, or the factors."""
    mods = lora_modules(model)
    if space == "product":
        parts = [m.delta_weight().detach() for _, m in mods]
    else:
        parts = [p.detach() for _, m in mods for p in (m.lora_B, m.lora_A)]
    return torch.cat([p.reshape(-1) for p in parts]).double()


def flat_gradient(model, targets, x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """Gradient of the mean cross-entropy over (x, y) wrt ``targets``, flattened (float64).

    Frozen targets (base weights) are differentiated without being unfrozen for the optimiser."""
    frozen = [t for t in targets if not t.requires_grad]
    for t in frozen:
        t.requires_grad_(True)
    try:
        total = None
        for i in range(0, len(y), chunk):
            loss = F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk], reduction="sum")
            flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, targets)]).double()
            total = flat if total is None else total + flat
    finally:
        for t in frozen:
            t.requires_grad_(False)
    return total / len(y)


def _loss(model, x, y, chunk) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (the federated server's evaluation), training mode kept."""
    acc, loss = evaluate(model, x, y, chunk)
    model.train()
    return loss, acc


def _optimizer(params, cfg: PilotConfig):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    return torch.optim.SGD(params, lr=cfg.learning_rate)


def _step(model, opt, x, y, rng: np.random.Generator, batch: int) -> None:
    idx = torch.from_numpy(rng.integers(len(y), size=min(batch, len(y))))
    loss = F.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _factor_deltas(model, start) -> list[tuple[np.ndarray, np.ndarray]]:
    return [((m.lora_B.detach() - b0).double().numpy(), (m.lora_A.detach() - a0).double().numpy())
            for (_, m), (b0, a0) in zip(lora_modules(model), start, strict=True)]


def covariance_round(model, client_data, weights, cfg: PilotConfig, seed_ids: tuple[int, ...]
                     ) -> float:
    """||Cov||_F (pooled over modules) of one uncompressed federated round from ``model``'s state.

    Every client trains ``local_steps`` steps from the same point with a fresh optimiser
    (docs/model.md §2); Cov = sum_k p_k (dB_k - dB_bar)(dA_k - dA_bar) per module.
    """
    start_state = copy.deepcopy(model.state_dict())
    start = [(m.lora_B.detach().clone(), m.lora_A.detach().clone()) for _, m in lora_modules(model)]
    deltas = []
    for k, (xk, yk) in enumerate(client_data):
        model.load_state_dict(start_state)
        opt = _optimizer([p for _, p in trainable_parameters(model)], cfg)
        rng = substream(cfg.seed, "sampling", *seed_ids, k)
        for _ in range(cfg.local_steps):
            _step(model, opt, xk, yk, rng, cfg.batch_size)
        deltas.append(_factor_deltas(model, start))
    model.load_state_dict(start_state)
    sq = 0.0
    for m in range(len(start)):
        db = np.stack([d[m][0] for d in deltas])
        da = np.stack([d[m][1] for d in deltas])
        sq += float(np.sum(factor_covariance(db, da, weights) ** 2))
    return math.sqrt(sq)


def client_gradient(model, targets, x_all, y_all, halves, chunk) -> tuple[torch.Tensor, float]:
    """Client k's gradient on its sample and the sampling noise of that estimate.

    ``halves = (h1, h2, n_k)``: two halves of the sample (train indices) and the client's data
    size. With g1, g2 the half gradients, ``E||g1 - g2||^2 / 4`` is the variance of their mean
    (equal halves), times the finite-population factor ``1 - n / n_k``.
    """
    h1, h2, n_k = halves
    g2 = flat_gradient(model, targets, x_all[h2], y_all[h2], chunk)
    if len(h1) == 0:
        return g2, 0.0
    g1 = flat_gradient(model, targets, x_all[h1], y_all[h1], chunk)
    n = len(h1) + len(h2)
    fpc = max(1.0 - n / n_k, 0.0)
    return (len(h1) * g1 + len(h2) * g2) / n, float((g1 - g2).square().sum()) / 4.0 * fpc


# --------------------------------------------------------------------------- the pilot
def run_pilot(model, task: Task, cfg: PilotConfig = PilotConfig(), note: str = "",
              keep_states: bool = False) -> PilotResult:
    """Measure the bound's statistics on a short trajectory (module docstring). ``model`` (a tsfa
    ViT with LoRA applied, e.g. by :func:`tsfa.fl.lora.apply_lora`) is copied, never changed.
    ``keep_states``: also return the model state at every checkpoint (for checks)."""
    model = copy.deepcopy(model)
    model.train()
    params = gradient_targets(model, cfg.gradient_space)
    mods = lora_modules(model)
    rank, alpha = mods[0][1].r, mods[0][1].lora_alpha
    rng_data = substream(cfg.seed, "partition", 1)
    x_all, y_all = task.train.tensors()
    pooled = np.concatenate(task.parts)
    pop = np.sort(rng_data.choice(pooled, size=min(cfg.pilot_samples, len(pooled)), replace=False))
    x, y = x_all[pop], y_all[pop]
    sizes = np.array([len(p) for p in task.parts], float)
    weights = sizes / sizes.sum()
    client_data, halves = [], []
    for part in task.parts:
        take = np.sort(rng_data.choice(part, size=min(cfg.client_samples, len(part)),
                                       replace=False))
        client_data.append((x_all[take], y_all[take]))
        halves.append((take[: len(take) // 2], take[len(take) // 2:], len(part)))
    x_test, y_test = task.test.tensors()
    x_test, y_test = x_test[:cfg.test_samples], y_test[:cfg.test_samples]
    start_delta = [m.delta_weight().detach().double().clone() for _, m in mods]
    init_loss, init_acc = _loss(model, x_test, y_test, cfg.grad_chunk)
    init_pop, _ = _loss(model, x, y, cfg.grad_chunk)
    opt = _optimizer([p for _, p in trainable_parameters(model)], cfg)
    rng_train = substream(cfg.seed, "training", 0)
    # checkpoints spread over the trajectory after its start (where B = 0 makes a round atypical)
    at = sorted({max(1, int(round(s))) for s in np.linspace(0, cfg.steps, cfg.checkpoints + 1)[1:]})
    rows, mb_rows, cl_rows, states = [], [], [], []
    step = 0
    for c, target in enumerate(at):
        while step < target:
            _step(model, opt, x, y, rng_train, cfg.batch_size)
            step += 1
        if keep_states:
            states.append(copy.deepcopy(model.state_dict()))
        x0 = current_point(model, cfg.gradient_space)
        g = flat_gradient(model, params, x, y, cfg.grad_chunk)
        pop_loss, _ = _loss(model, x, y, cfg.grad_chunk)
        rng_mb = substream(cfg.seed, "sampling", 10_000 + c)
        for j in range(cfg.minibatches):
            idx = torch.from_numpy(rng_mb.integers(len(y), size=min(cfg.batch_size, len(y))))
            gb = flat_gradient(model, params, x[idx], y[idx], cfg.grad_chunk)
            mb_rows.append({"checkpoint": c, "minibatch": j, "dev_sq": float((gb - g).square().sum()),
                            "norm_sq": float(gb.square().sum())})
        gk, noise = zip(*(client_gradient(model, params, x_all, y_all, h, cfg.grad_chunk)
                          for h in halves), strict=True)
        g_bar = sum(w * v for w, v in zip(weights, gk, strict=True))
        for k in range(len(gk)):
            cl_rows.append({"checkpoint": c, "client": k, "weight": float(weights[k]),
                            "dev_sq": float((gk[k] - g_bar).square().sum()),
                            "noise_sq": noise[k]})
        cov_fro = covariance_round(model, client_data, weights, cfg, (20_000 + c,))
        _step(model, opt, x, y, rng_train, cfg.batch_size)  # the next step of the trajectory
        step += 1
        x1 = current_point(model, cfg.gradient_space)
        g1 = flat_gradient(model, params, x, y, cfg.grad_chunk)
        rows.append({"checkpoint": c, "step": target, "population_loss": pop_loss,
                     "grad_sq": float(g.square().sum()),
                     "secant_grad_diff": float((g1 - g).norm()),
                     "secant_step": float((x1 - x0).norm()), "cov_fro": cov_fro})
    spec_rows = []
    for m_idx, ((name, m), d0) in enumerate(zip(mods, start_delta, strict=True)):
        s = torch.linalg.svdvals(m.delta_weight().detach().double() - d0).numpy()
        spec_rows += [{"module": name, "module_index": m_idx, "index": i + 1,
                       "singular_value": float(v)} for i, v in enumerate(s)]
    final_loss, final_acc = _loss(model, x_test, y_test, cfg.grad_chunk)
    pop_final, _ = _loss(model, x, y, cfg.grad_chunk)
    context = {"rank": int(rank), "lora_alpha": float(alpha), "num_clients": len(task.parts),
               "client_sizes": [int(s) for s in sizes], "n_modules": len(mods),
               "d_in": int(mods[0][1].base.in_features), "d_out": int(mods[0][1].base.out_features),
               "gradient_space": cfg.gradient_space,
               "gradient_dim": int(sum(p.numel() for p in params)), "note": note or task.note}
    summary = {"initial_population_loss": init_pop,
               "initial_test_loss": init_loss, "initial_test_accuracy": init_acc,
               "final_test_loss": final_loss, "final_test_accuracy": final_acc,
               "final_population_loss": pop_final, "steps_taken": step}
    return PilotResult(cfg, context, pd.DataFrame(rows), pd.DataFrame(mb_rows),
                       pd.DataFrame(cl_rows), pd.DataFrame(spec_rows), summary,
                       states=states if keep_states else None, population=pop)


# --------------------------------------------------------------------------- folders
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    return repr(v)


def pilot_toml(result: PilotResult) -> str:
    """``[pilot]`` (the hyper-parameters) and ``[context]`` (model and task) as TOML."""
    lines = ["# tsfa pilot run (docs/model.md, Calibration); read by `tsfa calibrate`", "[pilot]"]
    lines += section_toml_lines(result.config)
    lines += ["", "[context]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in result.context.items()]
    return "\n".join(lines) + "\n"


def save_pilot(result: PilotResult, out: str | Path, system: SystemSpec | None = None,
               command: str | None = None) -> Path:
    """Write the pilot folder: config.toml, metadata.json, the CSV tables, summary.json and,
    when ``system`` (or ``result.system``) is given, system.toml (the base of calibration)."""
    from tsfa.experiments.results import prepare_dir, write_table

    path = prepare_dir(out, pilot_toml(result), result.config.seed, command=command,
                       kind="pilot")
    system = system if system is not None else result.system
    if system is not None:
        (path / "system.toml").write_text(system.to_toml(), encoding="utf-8")
    for name in TABLES:
        write_table(getattr(result, name), path / f"{name}.csv")
    (path / "summary.json").write_text(json.dumps(result.summary, indent=2), encoding="utf-8")
    return path


def load_pilot(path: str | Path) -> PilotResult:
    """Read a folder written by :func:`save_pilot` (a missing file is a ``FileNotFoundError``
    naming it)."""
    import tomllib

    p = Path(path)
    need = ["config.toml", "summary.json", *(f"{t}.csv" for t in TABLES)]
    missing = [n for n in need if not (p / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{p}: not a pilot folder (missing {', '.join(missing)}); "
                                "write one with tsfa.experiments.pilot.save_pilot")
    conf = tomllib.loads((p / "config.toml").read_text(encoding="utf-8"))
    known = {f.name for f in fields(PilotConfig)}
    cfg = PilotConfig(**{k: v for k, v in conf.get("pilot", {}).items() if k in known})
    tables = {t: pd.read_csv(p / f"{t}.csv") for t in TABLES}
    summary = json.loads((p / "summary.json").read_text(encoding="utf-8"))
    system = load_spec(p / "system.toml") if (p / "system.toml").is_file() else None
    return PilotResult(cfg, conf.get("context", {}), summary=summary, path=p, system=system,
                       **tables)

# ruff: noqa: E501  (notebook cell sources are kept one statement per line)
"""Write the sensitivity notebooks of notebooks/ with nbformat (outputs stripped).

The notebooks call tsfa.experiments.runs only; they hold no logic. TSFA_NB_SMALL=1 makes them run at a
small size (the test suite executes them so). Re-run after editing: python analysis/make_notebooks.py
(``--out DIR`` writes them elsewhere than notebooks/, e.g. to compare with the committed ones).
"""

import argparse
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parents[1] / "notebooks"
NOTE = ("All numbers are tsfa's reconstruction (docs/model.md) on the paper-scale default spec "
        "(`tsfa spec`), not results of the paper.")
PARAMS = """import os
SMALL = os.environ.get("TSFA_NB_SMALL") == "1"  # the test suite runs the notebooks small"""

NOTEBOOKS = {
    "01_optimal_rank_sensitivity.ipynb": [
        ("md", "# Optimal rank r* vs bandwidth, latency budget, number of clients and SNR\n\n"
               "The offline stage (docs/model.md §3) picks r* = argmin J(r). Budgets are frozen at the "
               "default spec's realised values (seconds) so that they do not move with the rate. "
               + NOTE),
        ("code", PARAMS),
        ("code", "import numpy as np\nimport matplotlib.pyplot as plt\nimport tsfa\n"
                 "from tsfa.experiments import runs as an\n\nspec = tsfa.SystemSpec()\n"
                 "n = 5 if SMALL else 17\n"
                 "print('default r* =', tsfa.optimal_rank(spec).solution['rank'])"),
        ("md", "## Total bandwidth W_tot"),
        ("code", "bw = an.rank_sweep(spec, 'wireless.bandwidth_total_hz', np.geomspace(5e5, 2e7, n))\nbw"),
        ("md", "## Latency budget (uplink slack scaled)"),
        ("code", "bud = an.budget_sweep(spec, np.geomspace(0.3, 8, n))\nbud"),
        ("md", "## Number of clients K (same uplink slack per client, W_tot shared)"),
        ("code", "cl = an.clients_sweep(spec, [2, 5, 10, 20, 40] if SMALL else [2, 3, 5, 8, 10, 15, 20, 30, 40])\ncl"),
        ("md", "## SNR (transmit power moved; mean SNR on the equal share)"),
        ("code", "pw = an.power_sweep(spec, np.linspace(0, 40, n))\npw"),
        ("code", "fig, ax = plt.subplots(2, 2, figsize=(6.8, 4.5), constrained_layout=True)\n"
                 "ax[0, 0].step(bw['wireless.bandwidth_total_hz'] / 1e6, bw['rank'], where='mid'); ax[0, 0].set_xscale('log'); ax[0, 0].set_xlabel('W_tot [MHz]')\n"
                 "ax[0, 1].step(bud['mean_budget_s'], bud['rank'], where='mid'); ax[0, 1].set_xlabel('mean budget [s]')\n"
                 "ax[1, 0].step(cl['num_clients'], cl['rank'], where='mid'); ax[1, 0].set_xlabel('clients K')\n"
                 "ax[1, 1].step(pw['mean_snr_db'], pw['rank'], where='mid'); ax[1, 1].set_xlabel('mean SNR [dB]')\n"
                 "for a in ax.flat: a.set_ylabel('r*'); a.set_yscale('log', base=2)\n"
                 "fig.suptitle('r* (gaps: infeasible). tsfa reconstruction, not the paper', fontsize=8)"),
    ],
    "02_bound_terms.ipynb": [
        ("md", "# The bound's term breakdown\n\nJ(r) = rank + covariance + sparsification "
               "(docs/model.md §2-§3), per candidate rank, and the full six-term bound at r*. " + NOTE),
        ("code", PARAMS),
        ("code", "import matplotlib.pyplot as plt\nimport pandas as pd\nimport tsfa\n"
                 "from tsfa.experiments import runs as an\nfrom tsfa.reporting.report import bound_report\n\n"
                 "spec = tsfa.SystemSpec()\nterms = an.term_breakdown(spec)\nterms"),
        ("code", "rep = bound_report(spec)\nprint('r* =', rep['rank'], ' mean rho =', rep['rho_mean'])\n"
                 "pd.DataFrame(rep['terms'])"),
        ("md", "## How the terms move with the learning rate (cov and sparse scale with eta^2)"),
        ("code", "lrs = [1e-4, 5e-4, 2e-3] if SMALL else [5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3]\n"
                 "an.rank_sweep(spec, 'training.learning_rate', lrs)"),
        ("code", "t = terms.set_index('rank')[['rank_term', 'cov_term', 'sparse_term']]\n"
                 "ax = t.plot.bar(stacked=True, figsize=(3.4, 2.6), logy=False)\n"
                 "ax.set_ylabel('term value (dimensionless)'); ax.set_xlabel('LoRA rank r')\n"
                 "ax.set_title('J(r) terms, default constants (tsfa reconstruction)', fontsize=7)"),
    ],
    "03_controller_v_tradeoff.ipynb": [
        ("md", "# The controller's V trade-off\n\nDrift-plus-penalty (docs/model.md §4): larger V lowers "
               "the sparsification penalty (O(1/V) gap) at the price of larger virtual queues "
               "(O(V) bound). Simulated Rayleigh fading, the same draws for every V. " + NOTE),
        ("code", PARAMS),
        ("code", "import numpy as np\nimport matplotlib.pyplot as plt\nimport tsfa\n"
                 "from tsfa.experiments import runs as an\n\nspec = tsfa.SystemSpec()\n"
                 "V = [0.1, 1.0, 10.0] if SMALL else list(np.geomspace(0.03, 30, 9))\n"
                 "rounds = 60 if SMALL else 1000\n"
                 "summary, traces = an.v_sweep(spec, V, rounds)\nsummary"),
        ("code", "fig, ax = plt.subplots(1, 2, figsize=(6.8, 2.6), constrained_layout=True)\n"
                 "ax[0].loglog(summary['V'], summary['average_penalty'], 'o-'); ax[0].set_xlabel('V'); ax[0].set_ylabel('average penalty [s^2]')\n"
                 "ax[1].semilogx(summary['V'], summary['time_avg_queue_s'], 'o-'); ax[1].set_xlabel('V'); ax[1].set_ylabel('time-averaged queue [s]')\n"
                 "fig.suptitle('V trade-off (tsfa reconstruction, not the paper)', fontsize=8)"),
        ("code", "summary[['V', 'mean_rho', 'max_latency_ratio']]"),
    ],
}


def build(out: Path = HERE) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                    for kind, src in cells]
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives no diff
            cell.id = f"cell-{i:02d}"
        path = out / name
        nbf.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE,
                    help="folder the notebooks are written to (default: notebooks/)")
    for p in build(ap.parse_args().out):
        print(p)

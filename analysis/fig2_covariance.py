"""Figure 2: ||Cov^t||_F vs rounds for several tau, alpha, r.

docs/model.md §7; tsfa's reconstruction on its embedded task, not the paper's results.

Configuration: analysis/fig2_covariance.toml (plus analysis/base.toml). Runs are cached in OUT/runs by the
hash of their resolved config and reused; the figure is plotted from the saved results.

    python analysis/fig2_covariance.py --out figures --size quick
"""

from tsfa.reporting.figures import script_main

if __name__ == "__main__":
    script_main("fig2_covariance")

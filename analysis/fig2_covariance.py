"""Figure 2: ||Cov^t||_F vs rounds for several tau, alpha, r (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig2_covariance.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig2_covariance.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig2_covariance")

"""Figure 8: zeta ablation and orthogonality defect R(B, A) over training.

docs/model.md §7; tsfa's reconstruction on its embedded task, not the paper's results.

Configuration: analysis/fig8_zeta.toml (plus analysis/base.toml). Runs are cached in OUT/runs by the
hash of their resolved config and reused; the figure is plotted from the saved results.

    python analysis/fig8_zeta.py --out figures --size quick
"""

from tsfa.reporting.figures import script_main

if __name__ == "__main__":
    script_main("fig8_zeta")

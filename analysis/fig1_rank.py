"""Figure 1: bound J(r) and final accuracy vs rank r.

docs/model.md §7; tsfa's reconstruction on its embedded task, not the paper's results.

Configuration: analysis/fig1_rank.toml (plus analysis/base.toml). Runs are cached in OUT/runs by the
hash of their resolved config and reused; the figure is plotted from the saved results.

    python analysis/fig1_rank.py --out figures --size quick
"""

from tsfa.reporting.figures import script_main

if __name__ == "__main__":
    script_main("fig1_rank")

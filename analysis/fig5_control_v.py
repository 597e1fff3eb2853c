"""Figure 5: time-averaged latency and queues vs rounds for several V.

docs/model.md §7; tsfa's reconstruction on its embedded task, not the paper's results.

Configuration: analysis/fig5_control_v.toml (plus analysis/base.toml). Runs are cached in OUT/runs by the
hash of their resolved config and reused; the figure is plotted from the saved results.

    python analysis/fig5_control_v.py --out figures --size quick
"""

from tsfa.reporting.figures import script_main

if __name__ == "__main__":
    script_main("fig5_control_v")

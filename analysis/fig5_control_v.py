"""Figure 5: time-averaged latency and queues vs rounds for several V (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig5_control_v.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig5_control_v.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig5_control_v")

"""Figure 3: accuracy vs rounds, all methods, same latency budget (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig3_methods.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig3_methods.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig3_methods")

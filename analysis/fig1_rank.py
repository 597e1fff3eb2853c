"""Figure 1: bound J(r) and final accuracy vs rank r (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig1_rank.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig1_rank.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig1_rank")

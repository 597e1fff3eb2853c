"""Figure 6: accuracy vs latency budget, TSFA vs single-stage variants (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig6_budget.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig6_budget.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig6_budget")

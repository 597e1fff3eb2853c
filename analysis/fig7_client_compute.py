"""Figure 7: client compression time per round, SOFT vs SLoRA (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig7_client_compute.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig7_client_compute.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig7_client_compute")

"""Figure 4: final accuracy vs fixed rho, SOFT vs TLoRA/RLoRA (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig4_fixed_rho.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig4_fixed_rho.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig4_fixed_rho")

"""Figure 8: zeta ablation and orthogonality defect R(B, A) over training (docs/model.md §7; tsfa's
reconstruction, not the paper's results): ``python analysis/fig8_zeta.py --out figures``, options
``--size``, ``--store``, ``--threads``; config ``tsfa/experiments/configs/fig8_zeta.toml``."""

from tsfa.cli.figures import script_main

if __name__ == "__main__":
    script_main("fig8_zeta")

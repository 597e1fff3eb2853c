"""Experiments: run sizes, the run cache and the sweeps shared by figures, validation and method
comparisons. Run configs ship with the package (``tsfa/experiments/configs``)."""

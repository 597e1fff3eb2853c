"""Configuration: the system spec (:mod:`tsfa.config.spec`) and the run config of one federated
experiment (:mod:`tsfa.config.experiment`). Frozen, validated dataclasses loaded from TOML."""

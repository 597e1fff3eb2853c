"""Pure maths (numpy and scipy only; no torch, pandas or cvxpy at import): units, random
substreams, the wireless model, the realised system instance, the payload model, the convergence
bound, the separate-aggregation covariance and the symbolic derivations (docs/model.md)."""

"""Control: the offline stage (:mod:`tsfa.control.offline`, r*) and the online stage
(:mod:`tsfa.control.lyapunov`, drift-plus-penalty policies), wired to a spec by
:mod:`tsfa.control.from_spec` (docs/model.md)."""

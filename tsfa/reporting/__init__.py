"""Reporting: reports for the CLI (:mod:`tsfa.reporting.report`), the controller's record,
plot styles and the paper-style figures (result folders are :mod:`tsfa.experiments.results`)."""

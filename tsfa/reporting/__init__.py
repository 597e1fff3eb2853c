"""Reporting: result folders (:mod:`tsfa.reporting.results`), reports for the CLI
(:mod:`tsfa.reporting.report`), plot styles and the paper-style figures."""

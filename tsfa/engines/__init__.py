"""Engines: drivers that run the federated server and clients of :mod:`tsfa.fl` (in-process
and on Flower)."""

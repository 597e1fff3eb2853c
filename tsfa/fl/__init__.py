"""The torch side of tsfa: ViT with LoRA, data, compressors (SOFT and baselines), aggregation
and the federated loop. Import submodules directly (``tsfa.fl.loop``, ``tsfa.fl.compress``...);
nothing is imported here so the pure-maths modules stay torch-free.
"""

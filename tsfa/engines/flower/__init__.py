"""tsfa on Flower (``pip install "tsfa[flower]"``): the federated loop of :mod:`tsfa.fl.loop` as a
Flower app on the Message API, for Flower's simulation engine (Ray) and deployment engine.

* :mod:`tsfa.engines.flower.client_app`: ``ClientApp`` (local training, compression, error-feedback memory
  in the client's context state);
* :mod:`tsfa.engines.flower.server_app`: ``ServerApp`` and :class:`TSFAStrategy` (Lyapunov decisions in
  ``configure_train``, separate per-rank aggregation and virtual queues in ``aggregate_train``);
* :func:`train_flower`: one call (and ``tsfa train --engine flower``) on the simulation engine.

Both engines call the same functions (``Trainer.decide``, ``client_update``,
``Trainer.finish_round``) with the same stateless random substreams, so they log the same metrics.
"""

from tsfa.engines.flower.engine import backend_config, train_flower

__all__ = ["train_flower", "backend_config"]

"""tsfa on Flower (``pip install "tsfa[flower]"``): the server and clients of :mod:`tsfa.fl` as a
Flower app on the Message API, for Flower's simulation engine (Ray) and deployment engine.

* :mod:`tsfa.engines.flower.client_app`: ``ClientApp`` (a :class:`tsfa.fl.client.Client`: local
  training, compression; its error-feedback memory in the client's context state);
* :mod:`tsfa.engines.flower.server_app`: ``ServerApp`` and :class:`TSFAStrategy` (a
  :class:`tsfa.fl.server.Server`: decisions in ``configure_train``, aggregation, queues and
  evaluation in ``aggregate_train``);
* :func:`train_flower`: one call (and ``tsfa train --engine flower``) on the simulation engine.

The in-process engine (:mod:`tsfa.engines.local`) drives the same two objects with the same
stateless random substreams, so both engines log the same metrics.
"""

from tsfa.engines.flower.engine import backend_config, train_flower

__all__ = ["train_flower", "backend_config"]

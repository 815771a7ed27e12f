"""xsell: cross-sell and up-sell ranking service.

Stages live in subpackages: `xsell.data` (data contract), `xsell.retrieval`
(embeddings, Annoy, rule sources), `xsell.ranking` (features, LambdaRank, bundle,
the `Ranker` core), `xsell.server` (gRPC adapter), `xsell.clients`, `xsell.evaluation`.
"""

__version__ = "0.1.0"

"""Activation-aware mixed-rank compression of the ViT's linear layers (issue #8; docs/lowrank.md).

* :mod:`model.lowrank.svd`: activation-aware and weight SVD, the torch ``LowRankLinear``.
* :mod:`model.lowrank.ranks`: greedy (and uniform) per-layer ranks for a weight budget.
* :mod:`model.lowrank.compensate`: ``compress``: ranks, factors, layer-wise error compensation.
* :mod:`model.lowrank.quant`: int8 factors as ``factored_linear`` engine layers, the
  contract-exact torch forward, on-chip weight bits.

The results run (``python -m host.lowrank_results``, :mod:`host.lowrank_results`)
sits on top: it also runs the int8 model file on the host runtime.
"""

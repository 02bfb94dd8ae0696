"""Post-training quantization of the FP ViT family (ranking-aware PTQ, Liu et al. 2021).

* :mod:`model.ptq.quant`: specs, their engine layers, and the exact torch forward (:class:`~model.ptq.quant.QModel`);
* :mod:`model.ptq.search`: the Pearson/ranking-loss/bias-correction search, and the min-max/percentile baselines;
* :mod:`model.ptq.mixed`: nuclear-norm mixed precision per attention/MLP block;
* :mod:`model.ptq.export`: the model file.

The results run (``python -m host.ptq_results``, :mod:`host.ptq_results`) sits
on top: it also runs the model files on the host runtime's backends.

See ``docs/ptq.md``.
"""

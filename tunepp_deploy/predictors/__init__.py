"""One predictor per uncertainty method behind one interface (:mod:`.base`); :func:`.open.open_predictor`
opens any model file as its method's predictor. Modules: ``tunepp`` (MC dropout), ``variational``,
``segwithu``, ``saliency``; ``settings`` resolves run options from the model's config."""

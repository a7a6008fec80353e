"""Multimodal inputs for the core: what a row with an image and/or audio needs to be cached.

The hook layer, stores, probes and steering work on a multimodal model's language backbone
unchanged; this package adds what a multimodal input needs:

* :mod:`probe.multimodal.processors` -- loading a model's processor (offline fallbacks), its
  placeholders and the modality of each token;
* :mod:`probe.multimodal.encode` -- rows with an image and/or audio and text -> token ids, the
  processor's image/audio token positions (the *modality layout*) and the model inputs of a batch.

The modality codes themselves live in :mod:`probe.modality`. The image/text conflict
experiment built on this is the plugin :mod:`probe.vlm`. See ``docs/multimodal.md``.
"""

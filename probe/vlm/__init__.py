"""Multimodal models: the language backbone of vision- and audio-language models.

The hook layer, stores, probes and steering work on a multimodal model's language backbone
unchanged; this package adds what a multimodal input needs:

* :mod:`probe.vlm.processors` -- loading a model's processor (offline fallbacks), its
  placeholders and the modality of each token;
* :mod:`probe.vlm.encode` -- rows with an image and/or audio and text -> token ids, the
  processor's image/audio token positions (the *modality layout*) and the model inputs of a batch;
* :mod:`probe.vlm.images` -- simple emotion images drawn with PIL (faces, scenes);
* :mod:`probe.vlm.conflict` -- image/text conflict sets and modality attribution.

See ``docs/multimodal.md``.
"""

"""``probe conflict``: which modality a vision-language model's emotion follows (a plugin of probe).

* :mod:`probe.vlm.images` -- simple emotion images drawn with PIL (faces, scenes);
* :mod:`probe.vlm.conflict` -- image/text conflict sets and modality attribution;
* :mod:`probe.vlm.cli` -- the ``probe conflict`` command.

Multimodal encoding itself is core: :mod:`probe.multimodal` (``probe.vlm.encode`` and
``probe.vlm.processors`` still import from there). See ``docs/multimodal.md``.
"""

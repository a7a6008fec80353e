"""What each figure a ``probe`` command writes shows: the captions of ``probe report``.

One entry per figure name pattern (``{x}`` is the pooling, emotion or label in the file name);
a figure no entry knows is captioned with its name in words. Every entry mirrors the docstring
of the function that draws the figure (``probe/figures.py``, ``probe/behaviour/figures.py``,
``steering/figures.py``, ``steering/flips_figure.py``, ``circuits/figures.py``,
``probe/vlm/report.py``).

>>> caption("layerwise_last.png")[:44]
'Probe score against layer, pooling last: the'
"""

from __future__ import annotations

import re

#: ``(file-name pattern, caption)``; the pattern's group fills ``{x}``.
CAPTIONS: tuple[tuple[str, str], ...] = (
    (r"layerwise_(.+)", "Probe score against layer, pooling {x}: the cross-validated score per "
                        "site with its cluster-bootstrap CI band (held-out data dashed), next to "
                        "chance, the lexical (TF-IDF) baseline and the control task; peaks "
                        "marked."),
    (r"panels_(.+)", "One panel per metric, pooling {x}: each probe metric against layer with its "
                     "CI band and the same baselines."),
    (r"probe_vs_behaviour_(.+)", "Probe vs the model's own answers, pooling {x}, against layer: "
                                 "the probe's score next to each template's zero-shot score "
                                 "(bands) and chance; how much better than the majority answer "
                                 "a probe decodes the model's own answer; whether the probe's "
                                 "confidence predicts a right answer (AUROC)."),
    (r"personas_(.+)", "Personas (system prompts), pooling {x}: the valence-contrast shift along "
                       "probe and mean-difference directions by layer, and how the zero-shot "
                       "answer shares move."),
    (r"emotionprompt", "EmotionPrompt / NegativePrompt: task accuracy change per stimulus "
                       "(paired CI) and the valence shift of the answer-position representation "
                       "by layer."),
    (r"persistence", "Persistence: how readable the stimulus's emotion stays (P(true class) of "
                     "the probes) with the distance from the stimulus's end."),
    (r"cosine", "Cosine between the emotion directions: at a few layers (top) and each emotion "
                "across layers (bottom)."),
    (r"heldout_auroc", "Held-out AUROC of each emotion's direction against layer (directions "
                       "computed without the scored rows' scenario)."),
    (r"dose_response", "Dose-response per emotion: each judge's gated expression and the "
                       "perplexity ratio (log) against steering strength, for the selected "
                       "configuration on the tune prompts."),
    (r"pareto", "Selection score vs perplexity ratio of every ladder point per emotion; "
                "capability accuracy as colour where measured; the frontier and the chosen "
                "point marked."),
    (r"flips", "Steering flips: share of answers, flips to the steered emotion and away from the "
               "gold one against strength, per layer band; the random direction dashed grey, "
               "95% CI bands."),
    (r"heads_(.+)", "Attention heads, {x}: layer x head heatmaps of the attribution estimate and "
                    "of activation patching on one colour scale centred at 0 (grey: not "
                    "measured)."),
    (r"neurons_(.+)", "Neurons, {x}: the largest attribution estimates (and patched effects where "
                      "measured) as horizontal bars."),
    (r"influence_(.+)", "Sublayer influence, {x}: I = ds / (alpha sigma) of attention and MLP "
                        "outputs against layer."),
    (r"scatter_(.+)", "Estimate vs measurement, {x}: attribution (y) against activation patching "
                      "(x), one panel per component type."),
    (r"circuit_(.+)", "The circuit for {x}: its heads, neurons and sublayers by layer."),
    (r"faithfulness", "Faithfulness (solid, CI band) and completeness (dashed) of each circuit "
                      "against its size, on held-out scenarios."),
    (r"conflict", "Image vs text conflict: attribution share by layer, attribution vs ablation, "
                  "and which modality the answer follows."),
)


def caption(name: str) -> str:
    """What the figure file ``name`` (e.g. ``"layerwise_last.png"``) shows."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for pattern, text in CAPTIONS:
        m = re.fullmatch(pattern, stem)
        if m:
            return text.format(x=m.group(1) if m.groups() else "")
    return stem.replace("_", " ").replace("-", " ").capitalize() + "."

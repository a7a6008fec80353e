"""The baselines steering is compared with in ``steer-eval``: prompting, and random directions.

The plain prompting baseline (the system prompt "Always reply in {emotion}.", as Wang et al.),
the designed prompt of docs/judges.md (a system prompt plus a user-turn suffix), the designed
prompt combined with steering (:func:`prompt_arms`), and a random direction with the norm of a
steering vector's (:func:`random_like`).
"""

from __future__ import annotations

from steering.eval.grid import Arm

ADJECTIVES = {"anger": "angry", "sadness": "sad", "happiness": "happy", "fear": "scared",
              "surprise": "surprised", "disgust": "disgusted"}
#: The plain prompting baseline (system prompt), as Wang et al.
SYSTEM_PROMPT = "Always reply in {emotion}."
#: The better prompt (docs/judges.md section 7, chosen there on tune-half replies).
DESIGNED_SYSTEM = "You are an assistant who is always {adjective}. You express {emotion} in every reply."
DESIGNED_SUFFIX = " (Please answer, and sound {adjective}.)"


def prompt_arms(emotion: str, setting=None, point=None) -> list[Arm]:
    """The prompting baselines for ``emotion`` (and designed prompt + ``setting``, if given)."""
    adj = ADJECTIVES[emotion]
    designed = dict(system_prompt=DESIGNED_SYSTEM.format(adjective=adj, emotion=emotion),
                    user_suffix=DESIGNED_SUFFIX.format(adjective=adj))
    arms = [Arm(condition="prompt-system", emotion=emotion,
                system_prompt=SYSTEM_PROMPT.format(emotion=emotion)),
            Arm(condition="prompt-designed", emotion=emotion, **designed)]
    if setting is not None:
        arms.append(Arm(condition="prompt-designed+steered", emotion=emotion, setting=setting,
                        point=point, **designed))
    return arms


def random_like(vector, seed: int):
    """A random direction per site with the norm (and typical RMS) of ``vector``'s; for a
    low-rank intervention, a random one of its shapes and norms
    (:meth:`~steering.lowrank.LowRankIntervention.randomized`)."""
    import torch

    from steering.lowrank import LowRankIntervention
    from steering.vector import SteeringVector

    if isinstance(vector, LowRankIntervention):
        return vector.randomized(seed)
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for site, v in vector.directions.items():
        r = torch.randn(v.numel(), generator=g)
        dirs[site] = r / r.norm() * v.norm()
    return SteeringVector(dirs, {**vector.meta, "method": "random"})


__all__ = ["ADJECTIVES", "DESIGNED_SUFFIX", "DESIGNED_SYSTEM", "SYSTEM_PROMPT", "prompt_arms",
           "random_like"]

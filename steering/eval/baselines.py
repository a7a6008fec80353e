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


def random_like(vector, seed: int, *, states=None):
    """A random direction per site with the norm (and typical RMS) of ``vector``'s; for a
    low-rank intervention, a random one of its shapes and norms
    (:meth:`~steering.lowrank.LowRankIntervention.randomized`), or, with ``states``
    (:func:`reply_states`), one whose edit on those tokens is as large as the trained one's.
    (A vector adds the same edit to every token, so its norm already matches its edit.)"""
    import torch

    from steering.lowrank import LowRankIntervention
    from steering.vector import SteeringVector

    if isinstance(vector, LowRankIntervention):
        return vector.randomized(seed, states=states)
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for site, v in vector.directions.items():
        r = torch.randn(v.numel(), generator=g)
        dirs[site] = r / r.norm() * v.norm()
    return SteeringVector(dirs, {**vector.meta, "method": "random"})


def reply_states(lm, prompts, replies, sites, *, batch_size: int = 16) -> dict:
    """``{site: [tokens, d]}``: the unsteered residual at each of ``sites`` on the tokens
    steering edits (the last prompt token and each reply token) of ``prompts`` + ``replies``
    (chat template as :func:`steering.train.batching.pair_batch`). What
    :func:`random_like` matches a low-rank control's edit size on."""
    import torch

    from probe.hooks import StopForward
    from steering.train.batching import pair_batch

    sites = list(sites)
    got: dict = {s: [] for s in sites}
    for b0 in range(0, len(prompts), batch_size):
        b = pair_batch(lm, list(prompts[b0:b0 + batch_size]), list(replies[b0:b0 + batch_size]))
        keep = torch.cat([torch.ones(len(b.reply_mask), 1, dtype=torch.bool), b.reply_mask], 1)

        def reader(site, keep=keep, w=b.width):
            def fn(value, ctx):
                got[site].append(value[:, w - 1:].float()[keep].detach())
            return fn

        with torch.no_grad(), lm.hooks({s: reader(s) for s in sites},
                                       stop_after=max(s.layer for s in sites)):
            try:
                lm.model(**b.inputs)
            except StopForward:  # nothing after the deepest site is needed
                pass
    return {s: torch.cat(v) for s, v in got.items()}


__all__ = ["ADJECTIVES", "DESIGNED_SUFFIX", "DESIGNED_SYSTEM", "SYSTEM_PROMPT", "prompt_arms",
           "random_like", "reply_states"]

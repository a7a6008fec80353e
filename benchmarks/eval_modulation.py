"""Circuit modulation next to direction steering and prompting, judged like steering is.

(The earlier protocol: one judge selects and reports. ``benchmarks/eval_modulation_judged.py``
keeps the roles apart, as steering's evaluation now does, and adds a random circuit.)

For each emotion with a circuit file (from ``probe circuits``): replies of SmolLM2 to the shipped
neutral prompts (``datasets/steering_prompts``) under

* ``none``       -- no intervention;
* ``prompt``     -- the system prompt "Always reply in a {emotion} way.";
* ``direction``  -- the context-agnostic direction added at layers 10-19 (``SteeringVector.apply``,
  ``strength`` x the site's RMS, last prompt token and every generated token);
* ``circuit``    -- :func:`circuits.modulate.modulation_hooks` ("add" the circuit components'
  emotion offsets, times ``strength``, same positions).

The strength of ``direction`` and ``circuit`` is chosen on the ``tune`` prompts (best gated
expression under the classifier judge with a perplexity ratio <= ``--max-ppl-ratio``) and reported on the ``test`` prompts, with both judges
(TF-IDF classifier, NRC lexicon), scored as ``probe steer-eval`` scores
(:func:`steering.eval.scorer.table_rows`: the fluency gate with its perplexity check, the echo rule,
perplexity ratio against the unsteered replies, regime, a bootstrap CI over prompts).

    python benchmarks/eval_modulation.py runs/docs/circuits-happiness-sadness --emotions happiness,sadness
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

GEN = {"max_new_tokens": 32, "repetition_penalty": 1.05, "no_repeat_ngram_size": 3}


def _replies(lm, prompts, hooks=None, system_prompt=None, batch_size=10):
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = lm.batch(prompts[i:i + batch_size], system_prompt=system_prompt)
        with lm.hooks(hooks or {}):
            out += lm.generate(batch, **GEN)
    return out


def _spread(items, n):
    """``n`` items evenly spread over the list (the prompts are grouped by kind)."""
    idx = np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)
    return [items[i] for i in idx]


def _score(scorer, prompts, texts, emotion, *, condition="arm", system_prompt=None, reference=1.0):
    """One row per judge, judged as ``probe steer-eval`` judges (:mod:`steering.eval.protocol`): the
    gate with its perplexity check, the echo rule, perplexity ratio against ``reference``, regime,
    bootstrap CI over prompts."""
    from steering.eval.grid import Arm
    from steering.eval.scorer import table_rows

    arm = Arm(condition=condition, emotion=emotion, system_prompt=system_prompt)
    frame = scorer.frame(prompts, [arm], texts=[texts])
    return {r["judge"]: r for r in table_rows(frame, reference=reference, n_boot=1000, seed=0)}


def run(args) -> dict:
    from circuits.assemble import Circuit
    from circuits.modulate import component_offsets
    from circuits.pairs import split_groups
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.data import load_dataset
    from probe.models import load_model
    from probe.store import open_store
    from steering.directions import directions
    from steering.eval.grid import Arm
    from steering.eval.prompts import load_prompts
    from steering.eval.scorer import Scorer
    from steering.judges.emotion import ClassifierJudge, LexiconJudge

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    ds = load_dataset("emotion-scenarios")
    train, _ = split_groups(ds, seed=args.seed)
    config = CacheConfig(sites="blocks.10-19.hook_resid_post")
    store = cache_activations(lm, ds, config=config, out=default_store_path(lm, ds, config),
                              progress=False)
    sd = open_store(store, require_complete=False)
    rows = np.isin(np.array([str(g) for g in sd["group"].values]), train)
    vecs = directions(sd, method="context-agnostic", site="resid_post", layers=range(10, 20),
                      rows=rows)
    classifier = ClassifierJudge.load()
    judges = {"classifier": classifier, "lexicon": LexiconJudge.load(args.lexicons)}
    tune_p, test_p = (_spread(load_prompts(split), n)
                      for split, n in (("tune", args.tune), ("test", args.test)))
    tune, test = [p.text for p in tune_p], [p.text for p in test_p]
    scorer, tune_scorer = Scorer(lm, judges), Scorer(lm, {"classifier": classifier})
    f = ds.frame
    ref = list(f[f.group.isin(train)].sort_values("group").text)[::7]
    out = {"config": vars(args), "emotions": {}}
    base = _replies(lm, test)
    plain = scorer.frame(test_p, [Arm(condition="none", emotion=args.emotions[0])], texts=[base])
    ppl_ref = float(np.nanmedian(plain["perplexity"]))  # the perplexity ratios' denominator
    plain_tune = tune_scorer.frame(tune_p, [Arm(condition="none", emotion=args.emotions[0])],
                                   texts=[_replies(lm, tune)])
    tune_ref = float(np.nanmedian(plain_tune["perplexity"]))
    for emotion in args.emotions:
        circuit = Circuit.load(Path(args.run) / f"circuit_{emotion}.json")
        emo = list(f[(f.emotion == emotion) & f.group.isin(train)].sort_values("group").text)[:16]
        offsets = component_offsets(lm, circuit, lm.batch(emo), lm.batch(ref))
        res = {"circuit_size": circuit.size, "tune": {}, "test": {}}
        for arm, grid in (("circuit", args.circuit_strengths), ("direction", args.direction_scales)):
            best, best_key = None, None
            for s in grid:
                texts = _arm(lm, arm, tune, s, vecs[emotion], circuit, offsets)
                row = _score(tune_scorer, tune_p, texts, emotion, reference=tune_ref)["classifier"]
                acc, ratio = row["value"], row["ppl_ratio"]
                res["tune"][f"{arm}:{s}"] = {"accuracy": acc, "ppl_ratio": ratio}
                print(f"[tune] {emotion} {arm} {s}: classifier gated accuracy {acc:.2f}, "
                      f"perplexity ratio {ratio:.2f}", flush=True)
                # steer-eval's rule: the best expression within the perplexity bound; if no
                # strength is within it, the most fluent one
                key = (ratio <= args.max_ppl_ratio, acc if ratio <= args.max_ppl_ratio else -ratio)
                if best_key is None or key > best_key:
                    best, best_key = s, key
            texts = _arm(lm, arm, test, best, vecs[emotion], circuit, offsets)
            res["test"][arm] = {"strength": best, "examples": texts[:3], "scores": _score(
                scorer, test_p, texts, emotion, condition=arm, reference=ppl_ref)}
        system = f"Always reply in a {emotion} way."
        prompted = _replies(lm, test, system_prompt=system)
        res["test"]["prompt"] = {"examples": prompted[:3], "scores": _score(
            scorer, test_p, prompted, emotion, condition="prompt", system_prompt=system,
            reference=ppl_ref)}
        res["test"]["none"] = {"examples": base[:3], "scores": _score(
            scorer, test_p, base, emotion, condition="none", reference=ppl_ref)}
        out["emotions"][emotion] = res
        for arm, r in res["test"].items():
            s = r["scores"]
            print(f"[test] {emotion} {arm}{'' if 'strength' not in r else ' @' + str(r['strength'])}: "
                  + ", ".join(f"{j} {v['value']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] "
                              f"(judge only {v['judge_only']:.2f}, gate pass {v['gate_pass']:.2f}, "
                              f"ppl ratio {v['ppl_ratio']:.2f})"
                              for j, v in s.items()), flush=True)
    return out


def _arm(lm, arm, prompts, s, vec, circuit, offsets):
    from circuits.modulate import modulation_hooks

    if arm == "circuit":
        return _replies(lm, prompts, modulation_hooks(lm, circuit, strength=s, offsets=offsets))
    with vec.apply(lm, strength=s, positions="last-prompt+generated"):
        return _replies(lm, prompts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a probe circuits output folder (circuit_<emotion>.json)")
    p.add_argument("--emotions", default="happiness,sadness", type=lambda s: s.split(","))
    p.add_argument("--circuit-strengths", default="1,2,4,8", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--direction-scales", default="1,2,4", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--max-ppl-ratio", type=float, default=2.0,
                   help="strengths are chosen within this perplexity ratio (as steer-eval does)")
    p.add_argument("--tune", type=int, default=12, help="tune prompts used")
    p.add_argument("--test", type=int, default=20, help="test prompts used")
    p.add_argument("--lexicons", default="../shared/data/lexicons")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = run(args)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()

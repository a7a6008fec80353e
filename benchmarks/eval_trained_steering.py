"""Train steering vectors per emotion, select on tune prompts, report on held-out prompts.

Roles (enforced by :class:`steering.eval.composite.JudgeRoles` before anything is generated):

* training data: SEV neutral *scenarios* as prompts (not SEV replies) and the embedded model's
  own replies to them under each emotion's designed prompt (``steering.train.data``);
* selection judge: a TF-IDF judge fitted on dair-ai emotion + SEV replies (built at run time,
  never shipped; ``--select-judge``), scoring the AxBench composite on *tune* prompts (10 shipped
  tune prompts spread over the kinds + 8 SEV neutral scenarios never trained on);
* reporting judges: the shipped GoEmotions classifier and the NRC lexicon, on the 40 shipped
  *test* prompts only.

For each emotion: expression directions from the model's own replies (contrasted across
emotions, centred per prompt), then vectors trained by prompt distillation (amplify 0 and
``--amplify``), preference (target reply over another emotion's reply to the same prompt) and
the LM loss, all initialised from the expression direction; every candidate x scale scored on
the tune prompts; the best (method, scale) by selection composite with no collapse and
perplexity ratio <= 2 is the ``steered`` condition, reported with the other candidates'
selected points, unsteered, the user-turn prompt, the designed prompt, designed prompt +
steering (its scale selected separately) and a random vector of the winner's norm.

``--confirm-top K`` adds a second selection stage: the K best eligible steering points and the K
best prompt + steering points are generated again on the first stage's 18 tune prompts plus 42
more (the 30 shipped tune prompts the first stage left out, SEV skeletons 148-159), and each
kind's point is chosen by the selection composite over all 60, gates applied to all 60. Test
prompts are still touched only by the chosen points.

``--rule expression`` ranks eligible points by the selection judge's gated expression rate
(composite breaking ties) instead of the composite; ``--rule both`` selects with both rules in
the same run (the composite's choice is ``steered``, the expression rule's ``rule:expression``
with its own random vector and prompt + steering point; ``steering_summary.py --rule``).
``--sev-offset`` / ``--seed`` train on other SEV skeletons / in another row order, so a new
selection rule can be judged on candidates whose test rows nobody has seen. An objective name
ending in ``-r<R>`` (``sev-lm-r4``) trains a LoReFT low-rank intervention of rank ``R``
(``TrainConfig(rank=R)``, :class:`steering.lowrank.LowRankIntervention`) instead of a vector;
``-skip<N>`` before it leaves the replies' first ``N`` tokens out of the loss. ``rsd-lm`` /
``rsd-distill`` train on the model's own replies to the 96 *training* prompts
(``load_prompts("train")``: the evaluation's kinds, none of its prompts), sampled under the
designed prompt and kept where the *selection* judge reads the emotion and the reply stays on the
prompt (``steering.train.data.sampled_teacher``; ``--rsd-samples``, ``--rsd-keep``,
``--rsd-temperature``; ``--rsd-max-opening M`` keeps at most ``M`` kept replies per three-word
opening, ``steering.train.data.cap_openings``); an emotion with no kept reply gets no such
candidate. ``rsd-distill-skip6`` leaves the first 6 reply tokens out of the distillation too.
``rsd-pref`` prefers each kept reply over a rejected sample to the same prompt (plus the kept
reply's LM loss). ``self-lm`` / ``self-pref`` are ``rsd-lm`` / ``rsd-pref`` on the *steered*
model's own samples given the plain prompt (``--self-from OBJECTIVE:STRENGTH``, a vector of this
run), started from that vector at that strength: one round of on-policy self-training;
``self2-*`` is a second round, sampled with ``--self2-from`` (a ``self-*`` vector, say).
``--rsd-min-confidence P`` keeps a sample only where the selection judge's probability of the
emotion is at least ``P`` as well as its arg-max.

    python benchmarks/eval_trained_steering.py --emotions anger,sadness --out runs/trained
"""

from __future__ import annotations

import argparse
import json
import re
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.io import atomic_write
from probe.models import load_model
from steering.eval.baselines import random_like
from steering.eval.composite import CollapseConfig, JudgeRoles, judge_sources
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import NeutralPrompt, load_prompts
from steering.eval.protocol import spread
from steering.eval.scorer import Scorer
from steering.eval.trained import (
    RULES,
    baseline_arms,
    paired,
    rank_table,
    report_rows,
    score_arms,
    select_scale,
)
from steering.expression import expression_vectors, reply_activations
from steering.inject import Setting
from steering.judges.emotion import EMOTIONS, ClassifierJudge, LexiconJudge
from steering.lowrank import load_steering
from steering.train.data import (
    RSD_OBJECTIVES,
    SEV_OBJECTIVES,
    objective_data,
    rsd_data,
    sampled_teacher,
    sev_prompts,
    sev_reply_data,
    steered_teacher,
    teacher_replies,
)
from steering.train.trainer import TrainConfig, train_vector
from steering.vector import SteeringError, VectorSet


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def dump(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=float))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emotions", default="anger,sadness")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"),
                    help="the selection judge (default: the dair + SEV build the runs t7-t24 used; "
                         "new work: the build with a neutral class, --sources dair,sev-replies,meld, "
                         "docs/judges.md)")
    ap.add_argument("--train-prompts", type=int, default=40)
    ap.add_argument("--layers", default="6,9,12,15")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--amplify", type=float, default=2.0)
    ap.add_argument("--plausible", type=float, default=0.1,
                    help="distill-cd: amplified distillation whose target keeps only tokens with "
                         "p_prompted >= PLAUSIBLE x max p_prompted (contrastive decoding's constraint)")
    ap.add_argument("--objectives", default="distill,distill-amp,preference,lm")
    ap.add_argument("--more-scales", default="",
                    help="extra steering-alone scales for named vectors, e.g. distill-boot:1.25,distill-boot:1.5")
    ap.add_argument("--boot-from", default="distill-cd:0.25",
                    help="distill-boot's teacher: the designed prompt plus this objective's vector "
                         "at this strength, OBJECTIVE:STRENGTH (the objective listed before it)")
    ap.add_argument("--sev-skeletons", type=int, default=60,
                    help="SEV skeletons (x3 events) the sev-* objectives train on; the tune prompts "
                         "use skeletons 140-147 of the same order")
    ap.add_argument("--sev-offset", type=int, default=0,
                    help="the sev-* objectives train on skeletons OFFSET .. OFFSET + --sev-skeletons")
    ap.add_argument("--lm-weight", type=float, default=1.0, help="LM anchor of sev-pref-lm(-kl)")
    ap.add_argument("--kl-weight", type=float, default=1.0,
                    help="sev-pref-lm-kl, rsd-pref-kl (self-pref-kl, self2-pref-kl): weight of "
                         "KL(steered || unsteered) over the target reply")
    ap.add_argument("--seed", type=int, default=0, help="training row order (TrainConfig.seed)")
    ap.add_argument("--rsd-samples", type=int, default=4,
                    help="rsd-*: replies sampled per training prompt under the designed prompt")
    ap.add_argument("--rsd-keep", type=int, default=2,
                    help="rsd-*: at most this many kept replies per training prompt (most relevant)")
    ap.add_argument("--rsd-temperature", type=float, default=0.8)
    ap.add_argument("--self-from", default="rsd-lm:1",
                    help="self-*: the sampler, this run's OBJECTIVE vector at STRENGTH given the plain "
                         "prompt (OBJECTIVE:STRENGTH, listed before the self-* names or reused); the "
                         "self-* vector starts from it")
    ap.add_argument("--self2-from", default=None,
                    help="self2-*: a second round's sampler, OBJECTIVE:STRENGTH as --self-from")
    ap.add_argument("--rsd-min-confidence", type=float, default=None,
                    help="rsd-* / self*-*: keep a sample only where the selection judge's "
                         "probability of the emotion is at least this (default: its arg-max only)")
    ap.add_argument("--rsd-max-opening", type=int, default=0,
                    help="rsd-*: at most this many kept replies per three-word opening (0: no cap)")
    ap.add_argument("--rule", choices=(*RULES, "both"), default="composite",
                    help="selection rule: the composite (AxBench), the gated expression rate "
                         "(composite breaking ties), or both side by side")
    ap.add_argument("--scales", default="0.5,1,1.5,2")
    ap.add_argument("--expression-scales", default="1,2,3")
    ap.add_argument("--tune-prompts", type=int, default=10)
    ap.add_argument("--tune-sev", type=int, default=8)
    ap.add_argument("--confirm-top", type=int, default=0,
                    help="second selection stage: rescore the K best eligible steering points (and "
                         "K best prompt + steering points) on the confirm prompts (the shipped tune "
                         "prompts the first stage left out + SEV skeletons 148-159) and choose by the "
                         "composite over both stages' prompts; 0 = one stage")
    ap.add_argument("--train-positions", default="last-prompt+generated",
                    help="where the vectors trained by this run are added while training: "
                         "last-prompt+generated (as probe steer) or opening:K (only the states that "
                         "predict the reply's first K tokens; steer with --positions opening:K)")
    ap.add_argument("--sampler-positions", default=None,
                    help="self-* / self2-*: where the sampler's vector is added (default: --positions)")
    ap.add_argument("--positions", default="last-prompt+generated",
                    help="where the steering arms add their vector: last-prompt+generated (as the "
                         "vectors were trained) or e.g. generated:5 (from the 6th reply token on, so "
                         "the reply opens as the unsteered model would)")
    ap.add_argument("--max-phrase-share", type=float, default=None,
                    help="also gate selection on the share of replies containing the most common "
                         "word 4-gram anywhere (a template past the opening); default: reported only")
    ap.add_argument("--test-prompts", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true",
                    help="load the vectors and tune table an earlier run wrote to --out (training only "
                         "the objectives it has no vector for); score new arms only, and keep the "
                         "replies of arms the confirmation stage scored before")
    ap.add_argument("--combo-scales", default="",
                    help="extra designed prompt + vector arms, e.g. distill:0.5,distill-amp:0.25")
    args = ap.parse_args(argv)
    args.sampler_positions = args.sampler_positions or args.positions
    try:   # a bad --positions / --train-positions fails here, before anything loads
        Setting(positions=args.positions)
        Setting(positions=args.sampler_positions)
        TrainConfig(positions=args.train_positions)
    except SteeringError as exc:
        raise SystemExit(f"error: {exc}") from None
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emotions = args.emotions.split(",")
    if not (args.sev_skeletons >= 1 and args.sev_offset >= 0
            and args.sev_offset + args.sev_skeletons <= 140):   # skeletons 140.. are tune prompts
        raise SystemExit("--sev-offset + --sev-skeletons must be <= 140: SEV skeletons 140-159 are "
                         "tune and confirmation prompts")
    layers = tuple(int(x) for x in args.layers.split(","))
    data = Path(args.data)

    select = ClassifierJudge.load(args.select_judge)
    bases = {rsd_base(parse_name(o)[0]) for o in args.objectives.split(",")}
    report = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(data / "lexicons")}
    JudgeRoles(selection=("select", select), report=report,
               fitted_on={n: judge_sources(j) for n, j in report.items()},
               trained_on={"sev-scenarios", "smollm2-own-replies"}
               | ({"sev-replies"} if bases & set(SEV_OBJECTIVES) else set())
               | ({"steering-train-prompts"} if bases & set(RSD_OBJECTIVES) else set()))
    lm = load_model("smollm2-135m")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    teach = teacher_replies(lm, sev_prompts(data / "sev", n=args.train_prompts), EMOTIONS,
                            max_new_tokens=40, batch_size=40, cache="runs/teacher", log=log)
    log(f"teacher replies ready ({time.perf_counter() - t0:.0f} s)")

    # expression directions from the model's own replies, given the plain prompt
    if args.reuse and (out / "expression").is_dir():
        expr = VectorSet.load(out / "expression", lm)
    else:
        prompts6 = [p for e in EMOTIONS for p in teach.prompts]
        replies6 = [r for e in EMOTIONS for r in teach.replies[e]]
        labels6 = [e for e in EMOTIONS for _ in teach.prompts]
        groups6 = [str(i) for e in EMOTIONS for i in range(len(teach.prompts))]
        X = reply_activations(lm, prompts6, replies6, layers)
        expr = expression_vectors(lm, prompts6, replies6, labels6, layers=layers, emotions=EMOTIONS,
                                  groups=groups6, source="smollm2 designed-prompt replies to SEV scenarios", X=X)
        expr.save(out / "expression")
    log("expression directions saved")

    tune = tune_prompts(data, args.tune_prompts, args.tune_sev)
    confirm = confirm_prompts(data, tune)
    test = spread(load_prompts("test"), args.test_prompts)
    sel_scorer = Scorer(lm, {"select": select}, decoding=decoding, batch_size=64, log=log)
    rep_scorer = Scorer(lm, report, decoding=decoding, batch_size=64, log=log)
    refs = {}
    if args.reuse and (out / "refs.json").is_file():
        refs = json.loads((out / "refs.json").read_text())
    for name, scorer, prompts, cj in (("tune", sel_scorer, tune, {"select": select}),
                                      ("test", rep_scorer, test, report),
                                      ("confirm", sel_scorer, tune + confirm, {"select": select})):
        if name in refs or (name == "confirm" and not args.confirm_top):
            continue
        f = scorer.frame(prompts, [Arm(condition="unsteered", emotion=None)], relevance=True,
                         targets=emotions)
        ref_ppl = float(np.nanmedian(f["perplexity"]))
        ref_rel = float(np.nanmedian(f["relevance"]))
        refs[name] = (ref_ppl, ref_rel)
        log(f"{name}: unsteered median perplexity {ref_ppl:.2f}, relevance {ref_rel:.3f}")
    dump(out / "refs.json", refs)

    for emotion in emotions:
        run_emotion(lm, emotion, teach, expr, layers, args, out, tune, test, sel_scorer, rep_scorer,
                    select, report, refs, confirm)


def tune_prompts(data: Path, n_shipped: int = 10, n_sev: int = 8) -> list[NeutralPrompt]:
    """The first selection stage's tune prompts: ``n_shipped`` shipped tune prompts spread over
    their kinds and SEV skeletons 140 .. 140 + ``n_sev`` as narrative prompts."""
    return spread(load_prompts("tune"), n_shipped) + [
        NeutralPrompt(id=f"sev-{i}", text=t, kind="narrative", split="tune")
        for i, t in enumerate(sev_prompts(data / "sev", n=n_sev, offset=140))]


def confirm_prompts(data: Path, tune) -> list[NeutralPrompt]:
    """The confirmation stage's new prompts: the shipped tune prompts the first stage (``tune``)
    left out and SEV skeletons 148-159 as narrative prompts."""
    first_ids = {t.id for t in tune}
    return [p for p in load_prompts("tune") if p.id not in first_ids] + [
        NeutralPrompt(id=f"sev-{148 + i}", text=t, kind="narrative", split="tune")
        for i, t in enumerate(sev_prompts(data / "sev", n=12, offset=148))]


def train_all(lm, emotion, teach, expr, layers, args, out, names=None, have=None, select=None):
    vecs, logs = {}, {}
    for name in names if names is not None else args.objectives.split(","):
        init, extra, t = expr[emotion], {}, teach
        if name == "distill-boot":   # teacher: designed prompt + a first vector; start from it
            src, strength = args.boot_from.split(":")
            first = {**(have or {}), **vecs}.get(src)
            if first is None:
                raise SystemExit(f"distill-boot needs the {src} vector: list {src} before it in --objectives")
            t = steered_teacher(lm, teach, emotion, first, float(strength), cache="runs/teacher",
                                batch_size=40, log=log)
            init, extra = first, {"teacher_vector": first, "teacher_strength": float(strength)}
        base, skip, rank = parse_name(name)
        on_policy, init_strength = rsd_base(base) != base, 1.0
        sampler_from = args.self2_from if base.startswith("self2-") else args.self_from
        base = rsd_base(base)
        if base in RSD_OBJECTIVES:   # own sampled replies to the training prompts, judge-filtered
            sampler = None
            if on_policy:   # the steered model's own replies to the plain prompt; start from it
                if not sampler_from:
                    raise SystemExit(f"{name} needs its sampler: --self2-from OBJECTIVE:STRENGTH")
                src, strength = sampler_from.split(":")
                first = {**(have or {}), **vecs}.get(src)
                if first is None:
                    raise SystemExit(f"{name} samples with the {src} vector: list {src} before it")
                sampler = Setting(vector=first, strength=float(strength), positions=args.sampler_positions)
                init, init_strength = first * float(strength), None
            try:
                sampled = sampled_teacher(lm, [p.text for p in load_prompts("train")], emotion,
                                          judge=select, samples=args.rsd_samples, keep=args.rsd_keep,
                                          temperature=args.rsd_temperature, steer=sampler,
                                          prompted=not on_policy, cache="runs/teacher",
                                          min_confidence=args.rsd_min_confidence, log=log)
            except SteeringError as exc:
                log(f"{emotion}: no {name} candidate: {exc}")
                logs[name] = {"skipped": str(exc)}
                continue
            data, obj = rsd_data(base, sampled, plausible=args.plausible, skip_opening=skip,
                                 max_opening=args.rsd_max_opening, kl_weight=args.kl_weight)
            log(f"{emotion}: {name} trains on {len(data)} kept replies "
                f"(of {len(sampled.replies)} before the opening cap; "
                f"{sampled.meta['prompts_kept']} prompts, acceptance {sampled.meta['rate']:.2f})")
        elif base in SEV_OBJECTIVES:   # SEV's own replies (skeletons 0..n-1; tune uses 140..)
            data, obj = sev_reply_data(base, emotion, Path(args.data) / "sev", n=args.sev_skeletons,
                                       offset=args.sev_offset, lm_weight=args.lm_weight,
                                       kl_weight=args.kl_weight, skip_opening=skip)
        else:
            data, obj = objective_data(base, emotion, t, amplify=args.amplify, plausible=args.plausible,
                                       **extra)
        cfg = TrainConfig(layers=layers, steps=args.steps, batch_size=8, lr=0.02, init_strength=init_strength,
                          max_norm=4.0, seed=args.seed, rank=rank, positions=args.train_positions)
        log(f"{emotion}: training {name}")
        vec, tl = train_vector(lm, data, obj, cfg, init=init, emotion=emotion, log=log)
        vec.meta["method"] = f"trained-{name}"
        if on_policy:
            vec.meta["sampler"] = sampler_from
        if base in RSD_OBJECTIVES and args.rsd_min_confidence is not None:
            vec.meta["min_confidence"] = args.rsd_min_confidence
        vec.save(out / "vectors" / f"{emotion}-{name}")
        vecs[name], logs[name] = vec, tl.record()
        log(f"{emotion}: {name} loss {tl.losses[0]:.4f} -> {np.mean(tl.losses[-5:]):.4f} in {tl.seconds:.0f} s")
    return vecs, logs


def run_emotion(lm, emotion, teach, expr, layers, args, out, tune, test, sel_scorer, rep_scorer,
                select, report, refs, confirm):
    steer = partial(Setting, positions=args.positions)   # every steering arm of this run
    if args.reuse:   # vectors trained by an earlier run of this script into the same --out
        names = args.objectives.split(",")
        have = [n for n in names if (out / "vectors" / f"{emotion}-{n}.safetensors").is_file()]
        vecs = {n: load_steering(out / "vectors" / f"{emotion}-{n}", lm) for n in have}
        logs = json.loads((out / f"{emotion}-train.json").read_text())
        missing = [n for n in names if n not in have]
        if missing:
            new, new_logs = train_all(lm, emotion, teach, expr, layers, args, out, names=missing,
                                      have=vecs, select=select)
            vecs.update(new)
            logs.update(new_logs)
            dump(out / f"{emotion}-train.json", logs)
    else:
        vecs, logs = train_all(lm, emotion, teach, expr, layers, args, out, select=select)
        dump(out / f"{emotion}-train.json", logs)
    scales = [float(s) for s in args.scales.split(",")]
    candidates = {name: list(scales) for name in vecs}
    if args.expression_scales:   # "" leaves the expression direction out of the candidates
        vecs["expression"] = expr[emotion]
        candidates["expression"] = [float(s) for s in args.expression_scales.split(",")]
    for m, sc in (x.split(":") for x in args.more_scales.split(",") if x):
        if m in candidates and float(sc) not in candidates[m]:
            candidates[m].append(float(sc))
    arms = [Arm(condition=f"{m}@{s:g}", emotion=emotion,
                setting=steer(vector=vecs[m], strength=s, label=f"{m}@{s:g}"))
            for m, ss in candidates.items() for s in ss]
    designed = next(a for a in baseline_arms(emotion) if a.condition == "prompt-designed")
    arms += [Arm(condition=f"designed+{m}@{s:g}", emotion=emotion, system_prompt=designed.system_prompt,
                 user_suffix=designed.user_suffix, setting=steer(vector=vecs[m], strength=s))
             for m in ("distill", "expression") if m in vecs for s in candidates[m][:2]]
    arms.append(designed)
    arms += [Arm(condition=f"designed+{m}@{s:g}", emotion=emotion, system_prompt=designed.system_prompt,
                 user_suffix=designed.user_suffix, setting=steer(vector=vecs[m], strength=s))
             for m, s in ((x.split(":")[0], float(x.split(":")[1]))
                          for x in args.combo_scales.split(",") if x)
             if m in vecs]
    ref_ppl, ref_rel = refs["tune"]
    old = None
    if args.reuse and (out / f"{emotion}-tune.csv").is_file():   # score only arms not scored yet
        old = pd.read_csv(out / f"{emotion}-tune.csv")
        arms = [a for a in arms if a.condition not in set(old["condition"])]
    log(f"{emotion}: selection, {len(arms)} arms x {len(tune)} tune prompts")
    table = old
    if arms:
        ft = score_arms(sel_scorer, tune, arms, concept_judges={"select": select},
                        ref_perplexity=ref_ppl, ref_relevance=ref_rel)
        tag = "-more" if old is not None else ""
        ft.drop(columns=["signals"]).to_csv(out / f"{emotion}-tune-replies{tag}.csv", index=False)
        _, table = select_scale(ft, judge="select", ref_perplexity=ref_ppl,
                                collapse=CollapseConfig(max_phrase_share=args.max_phrase_share))
        if old is not None:
            table = pd.concat([old, table], ignore_index=True)
    table.to_csv(out / f"{emotion}-tune.csv", index=False)
    per_method = {}
    for m in candidates:
        t = table[table["condition"].str.startswith(f"{m}@") & table["eligible"]]
        if not t.empty:
            per_method[m] = str(t.sort_values("composite", ascending=False).iloc[0]["condition"])
    rules = list(RULES) if args.rule == "both" else [args.rule]
    picks = {r: first_picks(table, r) for r in rules}   # rule -> (steering alone, prompt + steering)

    def setting_of(label):
        m, s = label.removeprefix("designed+").split("@")
        return vecs[m], float(s)

    def arm_of(label):
        v, s = setting_of(label)
        extra = ({"system_prompt": designed.system_prompt, "user_suffix": designed.user_suffix}
                 if label.startswith("designed+") else {})
        return Arm(condition=label, emotion=emotion, setting=steer(vector=v, strength=s), **extra)

    stage1 = {"best": picks[rules[0]][0], "per_method": dict(per_method), "combo": picks[rules[0]][1],
              "rules": dict(picks)}
    if args.confirm_top:
        picks = confirm_choice(emotion, table, args.confirm_top, confirm, tune, out, sel_scorer,
                               select, *refs["confirm"], arm_of, rules,
                               CollapseConfig(max_phrase_share=args.max_phrase_share),
                               reuse=args.reuse) or picks
        if picks[rules[0]][0]:   # the confirmed point is its method's point on the test prompts
            per_method[picks[rules[0]][0].split("@")[0]] = picks[rules[0]][0]
    best, best_combo = picks[rules[0]]
    log(f"{emotion}: selected {picks} (per method {per_method})")
    dump(out / f"{emotion}-selection.json", {"best": best, "per_method": per_method, "combo": best_combo,
                                            "rules": dict(picks), "stage1": stage1,
                                            "confirm_top": args.confirm_top})

    test_arms = [Arm(condition="unsteered", emotion=None)]
    for m, label in per_method.items():
        v, s = setting_of(label)
        test_arms.append(Arm(condition=f"steered:{m}", emotion=emotion, setting=steer(vector=v, strength=s)))
    combo = None
    if best_combo:
        v, s = setting_of(best_combo)
        combo = steer(vector=v, strength=s)
    test_arms += baseline_arms(emotion, combo)
    if best:
        v, s = setting_of(best)
        test_arms.append(Arm(condition="random", emotion=emotion,
                             setting=steer(vector=random_like(v, seed=1), strength=s)))
    # the other rules' choices, under their own names where they differ from the first rule's
    winners = {rules[0]: f"steered:{best.split('@')[0]}" if best else None}
    randoms, combos = {rules[0]: "random" if best else None}, {rules[0]: "prompt-designed+steered"
                                                                 if best_combo else None}
    for r in rules[1:]:
        b, c = picks[r]
        winners[r], randoms[r], combos[r] = winners[rules[0]], randoms[rules[0]], combos[rules[0]]
        if b and b != best:
            v, s = setting_of(b)
            winners[r], randoms[r] = f"rule:{r}", f"random:{r}"
            test_arms += [Arm(condition=f"rule:{r}", emotion=emotion, setting=steer(vector=v, strength=s)),
                          Arm(condition=f"random:{r}", emotion=emotion,
                              setting=steer(vector=random_like(v, seed=1), strength=s))]
        if c and c != best_combo:
            v, s = setting_of(c)
            combos[r] = f"prompt-designed+steered:{r}"
            test_arms.append(Arm(condition=combos[r], emotion=emotion, system_prompt=designed.system_prompt,
                                 user_suffix=designed.user_suffix, setting=steer(vector=v, strength=s)))
    ref_ppl, ref_rel = refs["test"]
    log(f"{emotion}: test, {len(test_arms)} arms x {len(test)} test prompts")
    fr = score_arms(rep_scorer, test, test_arms, concept_judges=report, ref_perplexity=ref_ppl,
                    ref_relevance=ref_rel, targets=[emotion])
    fr.drop(columns=["signals"]).to_csv(out / f"{emotion}-test-replies.csv", index=False)
    rows = report_rows(fr, judges=list(report), unsteered=fr[fr["condition"] == "unsteered"],
                       ref_perplexity=ref_ppl, ref_relevance=ref_rel)
    win = winners[rules[0]]
    pairs = []
    for j in report:
        for a, b in ((win, "prompt-user"), (win, "prompt-designed"), (win, "random"), (win, "unsteered"),
                     ("prompt-designed+steered", "prompt-designed"),
                     *((w, x) for r in rules[1:] if winners[r] != win for w in [winners[r]]
                       for x in ("prompt-user", randoms[r], "unsteered", win))):
            if a and a in set(fr["condition"]) and b in set(fr["condition"]):
                for metric in ("expression", "composite"):
                    pairs.append(paired(fr, a, b, judge=j, metric=metric))
    dump(out / f"{emotion}-results.json", {"rows": rows, "paired": pairs, "winner": win,
                                           "winners": winners, "randoms": randoms, "combos": combos,
                                           "selected": {"best": best, "per_method": per_method,
                                                        "combo": best_combo, "rules": dict(picks)},
                                           "train": logs})
    pd.DataFrame(rows).to_csv(out / f"{emotion}-results.csv", index=False)
    log(f"{emotion}: done")


def parse_name(name: str) -> tuple[str, int, int]:
    """``(objective, skipped opening tokens, LoReFT rank)`` of a candidate's name:
    ``sev-lm-skip6-r4`` -> ``("sev-lm", 6, 4)``; ``distill`` -> ``("distill", 0, 0)``."""
    m = re.fullmatch(r"(.+?)(?:-skip(\d+))?(?:-r(\d+))?", name)
    return m.group(1), int(m.group(2) or 0), int(m.group(3) or 0)


def rsd_base(objective: str) -> str:
    """``self-lm`` / ``self2-lm`` -> ``rsd-lm``: the on-policy candidates (first and second
    round) train an ``rsd-*`` objective."""
    return re.sub(r"^self2?-", "rsd-", objective)


def kinds(conditions) -> tuple[list[str], list[str]]:
    """``(steering alone, prompt + steering)`` among candidate conditions, order kept; a
    condition may carry a ``<run>/`` prefix (``reselect.py`` pools runs); the designed prompt
    alone is neither."""
    label = {c: c.rpartition("/")[2] for c in conditions}
    return ([c for c in conditions if "@" in label[c] and not label[c].startswith("designed+")],
            [c for c in conditions if label[c].startswith("designed+")])


def first_picks(table, rule):
    """``(steering alone, prompt + steering)``: the best eligible point of each kind by ``rule``."""
    alone, combos = kinds(list(dict.fromkeys(rank_table(table[table["eligible"]], rule)["condition"])))
    return (alone[0] if alone else None, combos[0] if combos else None)


def confirm_choice(emotion, table, k, confirm, tune, out, sel_scorer, select, ref_ppl, ref_rel,
                   arm_of, rules=("composite",), collapse=None, reuse=False):
    """Second selection stage: the ``k`` best eligible steering points and the ``k`` best
    prompt + steering points of the first stage by each of ``rules``, scored again on the first
    stage's tune prompts and on the ``confirm`` prompts; each kind's point is chosen by each rule
    over all of them, the gates applied to all of them. Returns ``{rule: (best, best_combo)}``,
    or None when the first stage left nothing eligible. ``arm_of(label)``: the candidate's
    :class:`Arm`, named ``label``. ``reuse``: arms an earlier run of the same ``out`` confirmed
    keep their replies (``<emotion>-confirm-replies.csv``), the others generate."""
    alone, combos = [], []
    for r in rules:   # (dict.fromkeys: a reused run's table may list a condition twice)
        a, c = kinds(list(dict.fromkeys(rank_table(table[table["eligible"]], r)["condition"])))
        alone, combos = alone + a[:k], combos + c[:k]
    alone, combos = list(dict.fromkeys(alone)), list(dict.fromkeys(combos))
    if not alone and not combos:
        return None
    arms = [arm_of(label) for label in alone + combos]
    prompts = list(tune) + list(confirm)
    log(f"{emotion}: confirmation, {len(arms)} arms x {len(prompts)} tune prompts "
        f"({len(confirm)} new)")
    replies = out / f"{emotion}-confirm-replies.csv"
    fc = score_arms(sel_scorer, prompts, arms, concept_judges={"select": select},
                    ref_perplexity=ref_ppl, ref_relevance=ref_rel, reuse=replies if reuse else None)
    fc.drop(columns=["signals"]).to_csv(replies, index=False)
    _, pooled = select_scale(fc, judge="select", ref_perplexity=ref_ppl,
                             **({"collapse": collapse} if collapse else {}))
    first = table.drop_duplicates("condition", keep="last").set_index("condition")
    pooled["composite_stage1"] = pooled["condition"].map(first["composite"])
    pooled.to_csv(out / f"{emotion}-confirm.csv", index=False)
    out_picks = {}
    for r in rules:
        pick = list(rank_table(pooled[pooled["eligible"]], r)["condition"])
        out_picks[r] = (next((c for c in pick if c in alone), None), next((c for c in pick if c in combos), None))
    return out_picks


if __name__ == "__main__":
    main()

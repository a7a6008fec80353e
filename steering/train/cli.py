"""``probe steer-train``: train one emotion's steering vector on the model's own replies.

The data are the 64 neutral emotion-scenarios items (or the first ``--prompts`` of them) and the
model's greedy replies to them under each emotion's designed prompt (generated once, cached under
``cache/<model>/``, shared with ``probe directions --method expression``); the vector starts at
the expression direction and is trained through the hook layer with the model frozen
(:func:`steering.train.trainer.train_vector`). The result is a ``SteeringVector`` file that
``probe steer --vector`` applies. What each objective bought on SmolLM2: docs/steering.md
("Expression directions and trained vectors", "Plausibility-constrained distillation").
"""

from __future__ import annotations

import argparse

#: ``steering.train.data.OBJECTIVES``, repeated so that ``--help`` imports no torch (a test keeps
#: them equal).
OBJECTIVES = ("distill-cd", "distill", "distill-amp", "distill-boot", "preference", "lm")
#: ``steering.train.data.SEV_OBJECTIVES`` (trained on SEV's replies; need ``--sev``).
SEV_OBJECTIVES = ("sev-preference", "sev-pref-lm", "sev-pref-lm-kl", "sev-lm")
#: ``steering.train.data.RSD_OBJECTIVES`` (the model's own sampled replies, kept by ``--judge``).
RSD_OBJECTIVES = ("rsd-lm", "rsd-distill", "rsd-pref", "rsd-pref-kl")

EPILOG = """\
examples:
  probe steer-train --emotion anger --out runs/anger-cd            # distill-cd, layers 6,9,12,15
  probe steer --emotion anger --vector runs/anger-cd --strength 0.75 "How do bees make honey?"
  probe steer-train --emotion fear --objective lm --steps 10 --layers 10,14 --out runs/fear-lm
  probe steer-train --emotion anger --objective distill-boot --teacher-vector runs/anger-cd \
      --teacher-strength 0.25 --out runs/anger-boot   # the prompt + that vector, distilled
  probe steer-train --emotion anger --objective sev-pref-lm --sev ../shared/data/sev --out runs/anger-sev
  probe steer-train --emotion anger --rank 4 --out runs/anger-loreft   # a LoReFT edit of rank 4
  probe steer-train --emotion fear --objective rsd-lm --judge ~/.cache/emoprobe/judges/select_dair_sev_meld \
      --out runs/fear-rsd        # the model's own sampled replies that the judge calls fearful
  probe steer-train --emotion fear --objective rsd-lm --judge ~/.cache/emoprobe/judges/select_dair_sev_meld \
      --sample-vector runs/fear-rsd --sample-strength 1 --out runs/fear-self   # one round of self-training

objectives: distill (the steered model, given the plain prompt, matches the model given the
designed prompt), distill-amp (that target sharpened away from the plain model, --amplify),
distill-cd (distill-amp restricted to tokens the prompted model finds plausible, --plausible),
distill-boot (the designed prompt plus a first vector, --teacher-vector at --teacher-strength,
distilled into a vector that needs no prompt; it starts from the first vector), preference (the
emotion's reply over another emotion's reply to the same prompt), lm (the replies'
language-model loss); sev-preference, sev-pref-lm (the same plus the target reply's LM loss,
--lm-weight), sev-pref-lm-kl (sev-pref-lm plus --kl-weight x KL(steered || unsteered) over the
reply, a fluency term) and sev-lm learn from SEV's replies (Llama-3.2-3B answering a scenario + event in
each emotion; --sev is the folder with sev.jsonl and sev_accepted.jsonl) instead of the model's
own; rsd-lm (language-model loss), rsd-distill (distillation of the designed prompt) and rsd-pref
(each kept reply preferred over a rejected sample to the same prompt, plus its LM loss; rsd-pref-kl
adds --kl-weight x KL(steered || unsteered) over the kept reply) learn from
the model's replies to the 96 training prompts (questions, requests, small talk, instructions),
--samples per prompt sampled under the designed prompt and kept where --judge reads the emotion,
the fluency gate passes and the reply stays on the prompt (rejection sampling). With
--sample-vector FILE --sample-strength S the sampler is instead the model steered by that vector
given the plain prompt, and training continues that vector (on-policy self-training);
--min-confidence P also asks the judge's probability of the emotion to reach P. --judge is a
judge artifact (scripts/build_judge.py); a judge that chose the training replies should not be
the one you report with."""


def add_parser(sub) -> dict:
    """Add ``probe steer-train``; returns ``{"steer-train": handler}``."""
    from probe.cli_args import model_args

    p = sub.add_parser("steer-train", help="train a steering vector on the model's own replies",
                       description="Train one emotion's steering vector (prompt distillation, "
                                   "preference or language-model loss) through the hook layer, "
                                   "model frozen, and save it for `probe steer --vector`.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--emotion", required=True, help="anger, disgust, fear, happiness, sadness or surprise")
    p.add_argument("--objective", default="distill-cd", choices=OBJECTIVES + SEV_OBJECTIVES + RSD_OBJECTIVES,
                   help="what the vector is trained for (default: %(default)s)")
    p.add_argument("--layers", default="6,9,12,15", help="residual-stream layers steered (default: %(default)s)")
    p.add_argument("--positions", default="last-prompt+generated",
                   help="where the vector is added while training: last-prompt+generated (default, as "
                        "probe steer) or opening:K (only the states that predict the reply's first K "
                        "tokens; steer it with probe steer --positions opening:K)")
    p.add_argument("--steps", type=int, default=20, help="Adam steps (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=None,
                   help="training prompts: the first N of the 64 neutral emotion-scenarios items "
                        "(default 40; they also give the starting direction), and for rsd-* the first "
                        "N of the 96 training prompts (default all 96)")
    p.add_argument("--amplify", type=float, default=2.0, help="distill-amp/-cd sharpening (default: %(default)s)")
    p.add_argument("--plausible", type=float, default=0.1,
                   help="distill-cd: keep tokens with p >= this x max p (default: %(default)s)")
    p.add_argument("--max-norm", type=float, default=4.0,
                   help="each layer's vector stays within this x the layer's RMS (default: %(default)s)")
    p.add_argument("--teacher-vector", default=None,
                   help="distill-boot: the first vector the teacher adds to the designed prompt")
    p.add_argument("--teacher-strength", type=float, default=None,
                   help="distill-boot: the teacher's strength for --teacher-vector (x RMS)")
    p.add_argument("--sev", default=None,
                   help="sev-* objectives: the SEV folder (sev.jsonl, sev_accepted.jsonl)")
    p.add_argument("--sev-skeletons", type=int, default=60,
                   help="sev-*: SEV skeletons trained on, x3 events (default: %(default)s)")
    p.add_argument("--lm-weight", type=float, default=1.0,
                   help="sev-pref-lm: weight of the target replies' LM loss (default: %(default)s)")
    p.add_argument("--kl-weight", type=float, default=1.0,
                   help="sev-pref-lm-kl, rsd-pref-kl: weight of KL(steered || unsteered) over the target reply's "
                        "tokens (default: %(default)s)")
    p.add_argument("--skip-opening", type=int, default=0,
                   help="sev-*, rsd-*: leave each reply's first N tokens out of the loss, so the vector "
                        "does not learn the replies' stock openings (default: %(default)s)")
    p.add_argument("--max-opening", type=int, default=0,
                   help="rsd-*: keep at most N kept replies per three-word opening (0: no cap; "
                        "default: %(default)s)")
    p.add_argument("--judge", default=None,
                   help="rsd-*: the judge artifact that keeps the sampled replies expressing the emotion "
                        "(path without suffix, from scripts/build_judge.py)")
    p.add_argument("--sample-vector", default=None,
                   help="rsd-*: sample the model steered by this vector (given the plain prompt, not "
                        "the designed prompt) and continue training it (needs --sample-strength)")
    p.add_argument("--sample-strength", type=float, default=None,
                   help="rsd-*: the strength --sample-vector samples at, and the vector's start")
    p.add_argument("--samples", type=int, default=4,
                   help="rsd-*: replies sampled per training prompt (default: %(default)s)")
    p.add_argument("--keep", type=int, default=2,
                   help="rsd-*: kept replies per prompt at most, the most relevant (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="rsd-*: sampling temperature (default: %(default)s)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="rsd-*: also ask the judge's probability of the emotion to reach this, in "
                        "(0, 1) (default: its arg-max label only)")
    p.add_argument("--rank", type=int, default=0,
                   help="0: a steering vector (one direction per layer); R >= 1: a LoReFT low-rank "
                        "intervention of rank R per layer, an edit that depends on the token's state "
                        "(default: %(default)s)")
    p.add_argument("--out", required=True, help="the vector file to write (path without suffix)")
    return {"steer-train": cmd_steer_train}


def cmd_steer_train(args) -> int:
    from pathlib import Path

    from probe.cli_args import load_model
    from probe.paths import cache_root
    from steering.expression import model_expression_directions
    from steering.judges.emotion import EMOTIONS
    from steering.prompted import default_prompts
    from steering.train.data import (
        objective_data,
        rsd_data,
        sampled_teacher,
        sev_reply_data,
        steered_teacher,
        teacher_replies,
    )
    from steering.train.trainer import TrainConfig, train_vector
    from steering.vector import SteeringError, SteeringVector

    if args.emotion not in EMOTIONS:
        raise SteeringError(f"unknown emotion {args.emotion!r}; choose from {', '.join(EMOTIONS)}")
    try:
        layers = tuple(int(x) for x in args.layers.split(","))
    except ValueError:
        raise SteeringError(f"--layers takes comma-separated integers, e.g. 6,9,12,15; got {args.layers!r}") from None
    rsd = args.objective in RSD_OBJECTIVES
    n_prompts = args.prompts if args.prompts is not None else (96 if rsd else 40)
    if args.steps < 1 or n_prompts < 2 or args.rank < 0:
        raise SteeringError("--steps must be >= 1, --prompts >= 2 and --rank >= 0")
    TrainConfig(positions=args.positions)   # a bad --positions, before anything loads
    if rsd != (args.judge is not None):
        raise SteeringError("the rsd-* objectives keep the sampled replies a judge reads as the emotion "
                            "and take --judge PATH (build one: python scripts/build_judge.py --out PATH); "
                            "the other objectives take no --judge")
    if rsd and not (args.samples >= 1 and args.keep >= 1 and args.temperature > 0
                    and args.max_opening >= 0 and args.skip_opening >= 0):
        raise SteeringError(f"--samples and --keep must be >= 1, --temperature > 0, --max-opening and "
                            f"--skip-opening >= 0; got {args.samples}, {args.keep}, {args.temperature}, "
                            f"{args.max_opening}, {args.skip_opening}")
    if rsd and not args.kl_weight >= 0:
        raise SteeringError(f"these must be: --kl-weight >= 0 (got {args.kl_weight})")
    if not rsd and args.max_opening:
        raise SteeringError("--max-opening is for the rsd-* objectives")
    if args.min_confidence is not None and not (rsd and 0 < args.min_confidence < 1):
        raise SteeringError(f"--min-confidence is for the rsd-* objectives and lies in (0, 1); "
                            f"got {args.min_confidence}")
    on_policy = args.sample_vector is not None
    if on_policy != (args.sample_strength is not None) or (on_policy and not rsd):
        raise SteeringError("--sample-vector FILE and --sample-strength S go together, with an rsd-* "
                            "objective (the model steered by FILE at S samples its own replies)")
    if on_policy and not (args.sample_strength > 0 and args.rank == 0):
        raise SteeringError(f"--sample-strength must be > 0 and --rank 0 (the vector is continued); "
                            f"got {args.sample_strength}, --rank {args.rank}")
    boot = args.objective == "distill-boot"
    if boot != (args.teacher_vector is not None) or boot != (args.teacher_strength is not None):
        raise SteeringError("--objective distill-boot takes --teacher-vector FILE and --teacher-strength S "
                            "(a vector trained first, e.g. with distill-cd); the other objectives take neither")
    sev = args.objective in SEV_OBJECTIVES
    if sev != (args.sev is not None):
        raise SteeringError("the sev-* objectives train on SEV's replies and "
                            "takes --sev FOLDER (with sev.jsonl and sev_accepted.jsonl); the other "
                            "objectives train on the model's own replies and take no --sev")
    if sev:
        bad = [f"{flag} >= {low} (got {v})" for flag, v, low in (
            ("--sev-skeletons", args.sev_skeletons, 1), ("--lm-weight", args.lm_weight, 0),
            ("--kl-weight", args.kl_weight, 0), ("--skip-opening", args.skip_opening, 0))
            if not v >= low]
        if bad:
            raise SteeringError("these must be: " + "; ".join(bad))
    if not (sev or rsd) and args.skip_opening:
        raise SteeringError("--skip-opening is for the sev-* and rsd-* objectives")
    out = Path(args.out)
    if out.with_suffix(".safetensors").exists():
        raise SteeringError(f"{out.with_suffix('.safetensors')} exists; choose another --out")
    if sev:   # read (and check) SEV's replies before the model loads
        data, obj = sev_reply_data(args.objective, args.emotion, args.sev, n=args.sev_skeletons,
                                   lm_weight=args.lm_weight, skip_opening=args.skip_opening,
                                   kl_weight=args.kl_weight)
    judge = None
    if rsd:   # read (and check) the judge before the model loads
        from steering.judges.emotion import ClassifierJudge

        judge = ClassifierJudge.load(args.judge)
    lm = load_model(args)
    bad = [L for L in layers if not 0 <= L < lm.n_layers]
    if bad:
        raise SteeringError(f"--layers {bad} out of range: {lm.spec.alias} has layers 0-{lm.n_layers - 1}")
    prompts = default_prompts()[:args.prompts or 40]
    log = print if not getattr(args, "quiet", False) else None
    teach = None if on_policy else teacher_replies(lm, prompts, EMOTIONS, max_new_tokens=40,
                                                   cache=cache_root() / lm.spec.alias, log=log)
    e, name = args.emotion, args.objective
    extra = {}
    if boot:
        first = SteeringVector.load(args.teacher_vector, lm)
        teach = steered_teacher(lm, teach, e, first, args.teacher_strength,
                                cache=cache_root() / lm.spec.alias, log=log)
        extra = {"teacher_vector": first, "teacher_strength": args.teacher_strength}
        start = first
    elif not on_policy:   # (a continued vector starts from itself, below)
        start = model_expression_directions(lm, layers=layers, emotions=EMOTIONS, prompts=prompts,
                                            log=log)[e]
    sampler, init_strength = None, 1.0
    if on_policy:
        from steering.inject import Setting

        first = SteeringVector.load(args.sample_vector, lm)
        missing = [L for L in layers if L not in first.layers]
        if missing:
            raise SteeringError(f"--sample-vector has no direction at layers {missing}: train at its "
                                f"layers, --layers {','.join(map(str, first.layers))}")
        sampler = Setting(vector=first, strength=args.sample_strength)
        start, init_strength = first * args.sample_strength, None
    if rsd:
        from steering.eval.prompts import load_prompts

        sampled = sampled_teacher(lm, [p.text for p in load_prompts("train")][:n_prompts], e,
                                  judge=judge, samples=args.samples, keep=args.keep,
                                  temperature=args.temperature, steer=sampler,
                                  prompted=not on_policy, cache=cache_root() / lm.spec.alias,
                                  min_confidence=args.min_confidence, log=log)
        data, obj = rsd_data(name, sampled, plausible=args.plausible, skip_opening=args.skip_opening,
                             max_opening=args.max_opening, kl_weight=args.kl_weight)
    elif not sev:
        data, obj = objective_data(name, e, teach, amplify=args.amplify, plausible=args.plausible,
                                   **extra)
    cfg = TrainConfig(layers=layers, steps=args.steps, batch_size=8, lr=0.02,
                      init_strength=init_strength, max_norm=args.max_norm, rank=args.rank,
                      positions=args.positions)
    vec, tl = train_vector(lm, data, obj, cfg, init=start, emotion=e, log=log)
    vec.meta["method"] = f"trained-{name}"
    if rsd:   # how its data were drawn and kept (sampler, judge, rule), beside how it trained
        vec.meta["sampled"] = {k: sampled.meta[k] for k in ("sampler", "judge_sources", "rule", "rate",
                                                            "samples", "keep", "temperature")}
    out.parent.mkdir(parents=True, exist_ok=True)
    vec.save(out)
    print(f"{e}: {name} loss {tl.losses[0]:.4f} -> {tl.losses[-1]:.4f} in {tl.seconds:.0f} s; "
          f"wrote {out}.safetensors/.json\n"
          f"use it: probe steer --emotion {e} --vector {out} --strength {1 if on_policy else 0.75 if args.rank else 0.5} "
          + ("" if args.positions == "last-prompt+generated" else f"--positions {args.positions} ")
          + "PROMPT "
          "(choose the strength on prompts you will not report on"
          + ("; 1 applies the low-rank edit as trained)" if args.rank else ")"))
    return 0

"""Measurements behind docs/judges.md: generate replies, then score them with judges and gate.

    python scripts/judges_report.py generate --out runs/judges     # SmolLM2 replies (~15-30 min)
    python scripts/judges_report.py report --out runs/judges       # judges, gate, regimes
    python scripts/judges_report.py fixtures --out runs/judges     # refresh the tests' fixtures

``generate`` writes ``generations.jsonl``: unsteered replies to all 80 neutral prompts; prompting
baselines on the tune half (six emotions x three prompts); and replies steered crudely (a plain
forward hook adding ``alpha * RMS(h) * v`` at layers 10-19, every position, ``v`` the unit mean
difference of emotion-scenarios' last-token resid_post between happiness and the other classes)
to get real degenerate text. Greedy decoding, 48 new tokens, the chat template.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from steering.judges.emotion import EMOTIONS  # noqa: E402
from steering.scoring import greedy_replies  # noqa: E402

ADJ = {"anger": "angry", "sadness": "sad", "happiness": "happy", "fear": "scared",
       "surprise": "surprised", "disgust": "disgusted"}
PROMPTS = {
    "system": lambda e: ("Always reply in {e}.".format(e=e), "{p}"),
    "user": lambda e: (None, "{p}\n\nAlways reply in " + e + "."),
    "designed": lambda e: (f"You are an assistant who is always {ADJ[e]}. You express {e} in "
                           "every reply.", "{p} (Please answer, and sound " + ADJ[e] + ".)"),
}
STEER_LAYERS = range(10, 20)
SECTIONS = ("judges", "gate", "expression", "regimes", "llm", "capability")


def neutral_prompts(split: str | None = None) -> list[dict]:
    from steering.eval.prompts import load_prompts

    return [p.__dict__ for p in load_prompts(split)]


def generate(lm, prompts, *, system_prompt=None, **kw) -> list[str]:
    """Greedy replies, 48 new tokens, chat template (see steering.scoring.greedy_replies)."""
    return greedy_replies(lm, prompts, system_prompt=system_prompt, max_new_tokens=48,
                          batch_size=8, **kw)


def happiness_direction(lm) -> dict[int, torch.Tensor]:
    """Unit mean difference (happiness - rest) of last-token resid_post, per steered layer."""
    from probe.capture import iter_blocks
    from probe.data import load_dataset
    from probe.sites import Site
    from probe.tokens import encode

    ds = load_dataset("emotion-scenarios")
    enc = encode(lm.tokenizer, list(ds.frame["text"]), chat_template=True)
    sites = [Site.parse(f"blocks.{L}.hook_resid_post") for L in STEER_LAYERS]
    acts = {s: [] for s in sites}
    for _, block in iter_blocks(lm, enc, sites, ["last"], batch_size=16, block_size=512):
        for s in sites:
            acts[s].append(block[s][:, 0])
    is_happy = torch.tensor((ds.frame["emotion"] == "happiness").to_numpy())
    dirs = {}
    for s in sites:
        x = torch.cat(acts[s])
        v = x[is_happy].mean(0) - x[~is_happy].mean(0)
        dirs[s.layer] = v / v.norm()
    return dirs


@contextmanager
def crude_steer(lm, dirs: dict[int, torch.Tensor], alpha: float):
    """Add ``alpha * RMS(h) * v`` to every position's residual after each layer in ``dirs``."""
    layers, handles = lm.arch.layers(lm.model), []

    def make(v):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h + alpha * h.pow(2).mean(-1, keepdim=True).sqrt() * v.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return hook
    try:
        for layer, v in dirs.items():
            handles.append(layers[layer].register_forward_hook(make(v)))
        yield
    finally:
        for h in handles:
            h.remove()


def cmd_generate(lm, out: Path, limit_steer: int = 10) -> None:
    rows, t0 = [], time.perf_counter()

    def add(condition, target, alpha, prompts, replies):
        for p, r in zip(prompts, replies):
            rows.append({"condition": condition, "target": target, "alpha": alpha,
                         "prompt_id": p["id"], "split": p["split"], "prompt": p["text"],
                         "reply": r})
        print(f"{condition:<16} {target or '-':<10} {alpha!s:<5} {len(prompts)} replies "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    everything, tune = neutral_prompts(), neutral_prompts("tune")
    add("unsteered", None, None, everything, generate(lm, [p["text"] for p in everything]))
    for style, make in PROMPTS.items():
        for e in EMOTIONS:
            system, user = make(e)
            add(f"prompt-{style}", e, None, tune,
                generate(lm, [user.format(p=p["text"]) for p in tune], system_prompt=system))
    dirs, few = happiness_direction(lm), tune[:limit_steer]
    for name, kw, alphas in (("steer-wang", dict(repetition_penalty=1.05, no_repeat_ngram_size=3),
                              (1, 2, 4, 8, 12)), ("steer-plain", {}, (4, 8, 12))):
        for alpha in alphas:
            with crude_steer(lm, dirs, alpha):
                add(name, "happiness", alpha, few, generate(lm, [p["text"] for p in few], **kw))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "generations.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} replies to {out / 'generations.jsonl'}")


# ---------------------------------------------------------------------------- report
def load_generations(out: Path) -> list[dict]:
    path = out / "generations.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; run `judges_report.py generate --out {out}`")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def table(rows: list[dict], title: str) -> None:
    """Print rows as an aligned text table (floats with 3 decimals)."""
    print(f"\n### {title}")
    if not rows:
        print("(none)")
        return
    cols = list(dict.fromkeys(c for r in rows for c in r))  # rows may add columns
    cells = [[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
             for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, width)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, width)))


def report_judges(judge, lexicon, data_root) -> list[dict]:
    """Held-out accuracy of both judges on every source, and their kappa."""
    from steering.judges.build import load_source
    from steering.judges.emotion import cohen_kappa

    rows = []
    for name in ("goemotions", "dair", "sev-replies"):
        test = load_source(name, data_root).test
        y = test["y"].to_numpy()
        c, lx = judge.predict(list(test["text"])), lexicon.predict(list(test["text"]))
        rec = judge.meta["heldout"][name]
        rows.append({"held-out": name, "n": len(y), "classifier": float(np.mean(np.array(c) == y)),
                     "classifier CI": f"[{rec['ci'][0]:.3f}, {rec['ci'][1]:.3f}]",
                     "lexicon": float(np.mean(np.array(lx) == y)),
                     "kappa(cls, lex)": cohen_kappa(c, lx)})
    table(rows, "judges on held-out data (accuracy, 7 labels)")
    return rows


def report_llm_judge(lm, judge, data_root, n_choose=140, n_report=280) -> list[dict]:
    """LLM judge (SmolLM2) on SEV replies: variant chosen on half A, reported on half B."""
    from steering.judges.build import load_source
    from steering.judges.emotion import cohen_kappa
    from steering.judges.llm import LLMJudge

    data = load_source("sev-replies", data_root)
    a = data.train.sample(n_choose, random_state=0)
    b = data.test.sample(n_report, random_state=0)
    rows, best = [], None
    for calibrate in (False, True):
        for cap in (False, True):
            j = LLMJudge(lm, calibrate=calibrate, capitalize=cap)
            acc = float(np.mean(np.array(j.predict(list(a["text"]))) == a["y"].to_numpy()))
            rows.append({"set": "SEV half A (choose)", "calibrate": calibrate, "capitalize": cap,
                         "n": len(a), "accuracy": acc})
            best = max(best or (acc, j), (acc, j), key=lambda t: t[0])
    j = best[1]
    pred = j.predict(list(b["text"]))
    rows.append({"set": "SEV half B (report)", "calibrate": j.calibrate, "capitalize": j.capitalize,
                 "n": len(b), "accuracy": float(np.mean(np.array(pred) == b["y"].to_numpy()))})
    free = j.generate_labels(list(b["text"][:100]))
    ok = [f for f in free if f is not None]
    rows.append({"set": "SEV half B, free reply parsed", "calibrate": "-", "capitalize": "-",
                 "n": 100, "accuracy": float(np.mean(np.array(free, dtype=object)
                                                     == b["y"].to_numpy()[:100]))})
    table(rows, "LLM judge = SmolLM2-135M (label log-likelihood)")
    print(f"free replies: {len(ok)}/100 parsed; labels {dict(Counter(pred))}; "
          f"kappa with classifier on half B: "
          f"{cohen_kappa(pred, judge.predict(list(b['text']))):.3f}")
    return rows


def sev_half_b(data_root, n: int) -> tuple[list[str], list[str]]:
    """``n`` SEV replies of held-out half B with their stimulus as the prompt."""
    import os

    from probe.data import load_dataset
    from probe.data.readers import sev_text

    root = Path(data_root or os.environ["EMOPROBE_SHARED_DATA"])
    f = load_dataset(f"sev-replies:{root / 'sev'}").frame
    half_a = set(sorted(f["group"].unique())[0::2])
    b = f[~f["group"].isin(half_a)].sample(n, random_state=0)
    return [sev_text(s, e) for s, e in zip(b["scenario"], b["event"])], list(b["text"])


def gate_sets(gens: list[dict], data_root, n_sev: int = 300) -> dict[str, tuple[list, list]]:
    """The text sets the gate is measured on: ``{name: (prompts, replies)}``."""
    from tests.steering.degenerate import synthetic

    def pick(cond, split=None, alphas=None):
        rows = [g for g in gens if g["condition"] == cond and (split is None or g["split"] == split)
                and (alphas is None or g["alpha"] in alphas)]
        return [g["prompt"] for g in rows], [g["reply"] for g in rows]

    tune = [g["prompt"] for g in gens if g["condition"] == "unsteered" and g["split"] == "tune"]
    syn = synthetic(seed=2, per_family=5)
    return {
        "fluent: SEV replies, half B": sev_half_b(data_root, n_sev),
        "fluent: unsteered, tune half": pick("unsteered", "tune"),
        "fluent: unsteered, test half": pick("unsteered", "test"),
        "degenerate: synthetic (seed 2)": ([tune[i % len(tune)] for i in range(len(syn))],
                                           [t for _, t in syn]),
        "real steered, alpha 1-2": pick("steer-wang", alphas=(1, 2)),
        "degenerate: steered (Wang recipe) alpha 4-12": pick("steer-wang", alphas=(4, 8, 12)),
        "degenerate: steered (plain greedy) alpha 4-12": pick("steer-plain", alphas=(4, 8, 12)),
    }


def report_gate(lm, judge, gens, data_root) -> tuple[list[dict], float]:
    """Gate verdicts per set: lexical checks alone, then with perplexity."""
    from steering.judges.fluency import perplexity, reference_perplexity
    from steering.judges.gate import gate, text_signals

    rows, ref = [], None
    for name, (prompts, replies) in gate_sets(gens, data_root).items():
        ppl = perplexity(lm, prompts, replies)
        if name == "fluent: unsteered, tune half":
            ref = reference_perplexity(ppl)
        lexical = gate(text_signals(replies, judge.words))
        full = gate(text_signals(replies, judge.words, perplexity=ppl))
        finite = ppl[np.isfinite(ppl)]
        rows.append({"set": name, "n": len(replies),
                     "rejected (lexical)": float(np.mean([not r.passed for r in lexical])),
                     "rejected (+perplexity)": float(np.mean([not r.passed for r in full])),
                     "median ppl": float(np.median(finite)) if len(finite) else float("nan"),
                     "reasons": dict(Counter(r.reason for r in full if not r.passed))})
    table(rows, "fluency gate: share rejected per set")
    print(f"reference perplexity (median of unsteered tune-half replies): {ref:.2f}")
    return rows, ref


def _setting(gens, condition, alpha=None, split=None) -> list[dict]:
    return [g for g in gens if g["condition"] == condition and g["alpha"] == alpha
            and (split is None or g["split"] == split)]


def _echoes(reply: str, emotion: str) -> bool:
    """The reply repeats the instruction that names the emotion (judges then read the prompt)."""
    return any(m in reply for m in ("Please answer", f"sound {ADJ[emotion]}",
                                    f"reply in {emotion}", f"always {ADJ[emotion]}"))


def report_expression(lm, judge, lexicon, gens, ref) -> list[dict]:
    """What the judges call unsteered replies; prompting baselines scored with the gate."""
    from steering.judges.emotion import agreement, expression_scores
    from steering.judges.fluency import fluency_signals
    from steering.judges.gate import gate, passed

    plain = [g["reply"] for g in _setting(gens, "unsteered", split="tune")]
    print(f"\nunsteered tune-half replies ({len(plain)}): classifier "
          f"{dict(Counter(judge.predict(plain)))}; lexicon {dict(Counter(lexicon.predict(plain)))}")
    rows, per_emotion = [], []
    for style in PROMPTS:
        g = _setting(gens, f"prompt-{style}")
        replies, targets = [x["reply"] for x in g], [x["target"] for x in g]
        ok = passed(gate(fluency_signals(lm, [x["prompt"] for x in g], replies, judge.words,
                                         reference_perplexity=ref)))
        said = {"classifier": judge.predict(replies), "lexicon": lexicon.predict(replies)}
        kappa = agreement(said)[("classifier", "lexicon")]
        echo = np.array([_echoes(r, t) for r, t in zip(replies, targets)])
        for sc in expression_scores(said, targets, ok, [x["prompt_id"] for x in g]):
            hits = (np.array(said[sc.judge]) == np.array(targets)) & ok
            rows.append({"prompt": style, "judge": sc.judge, "expression": sc.accuracy,
                         "CI": f"[{sc.ci_low:.3f}, {sc.ci_high:.3f}]",
                         "judge only": sc.judge_only, "gate pass": sc.gate_pass, "kappa": kappa,
                         "hits echoing the prompt": int((hits & echo).sum())})
        for e in EMOTIONS:
            idx = [i for i, t in enumerate(targets) if t == e]
            per_emotion.append({"prompt": style, "emotion": e, **{
                j: float(np.mean([said[j][i] == e and ok[i] for i in idx])) for j in said}})
    table(rows, "prompting baselines, tune half (40 prompts x 6 emotions), gated expression")
    table(per_emotion, "prompting baselines per emotion (gated expression)")
    return rows


def report_regimes(lm, judge, lexicon, gens, ref) -> list[dict]:
    """Regime of every setting, with the happiness expression of the steered ones."""
    from steering.judges.fluency import classify_regime, fluency_signals, relevance
    from steering.judges.gate import gate, passed

    settings = [("unsteered (tune)", _setting(gens, "unsteered", split="tune"))]
    settings += [(f"prompt-{s}", _setting(gens, f"prompt-{s}")) for s in PROMPTS]
    settings += [(f"{c} alpha {a}", _setting(gens, c, a)) for c, alphas in
                 (("steer-wang", (1, 2, 4, 8, 12)), ("steer-plain", (4, 8, 12))) for a in alphas]
    rows = []
    for name, g in settings:
        replies = [x["reply"] for x in g]
        sig = fluency_signals(lm, [x["prompt"] for x in g], replies, judge.words,
                              reference_perplexity=ref)
        rep, ok = classify_regime(sig, reference=ref), passed(gate(sig))
        few = g[:40]  # relevance costs two forwards per reply: the first 40 replies
        rel = relevance(lm, [x["prompt"] for x in few], [x["reply"] for x in few])
        row = {"setting": name, "n": len(g), "regime": rep.regime, "ppl ratio": rep.ppl_ratio,
               "loop share": rep.loop_share, "gate fail": rep.fail_share,
               "relevance (nats/token)": float(np.nanmedian(rel))}
        if name.startswith("steer"):
            for jn, j in (("cls", judge), ("lex", lexicon)):
                said = np.array(j.predict(replies)) == "happiness"
                row[f"happy {jn} (judge only)"] = float(said.mean())
                row[f"happy {jn} (gated)"] = float((said & ok).mean())
        rows.append(row)
    table(rows, "regimes (ppl ratio = median perplexity / unsteered tune-half median)")
    return rows


def report_capability(lm) -> list[dict]:
    """Unsteered accuracy (both scorings) and under crude steering (text scoring)."""
    from steering.eval.capability import evaluate_capability

    rows = []
    for scoring in ("letter", "text"):
        r = evaluate_capability(lm, scoring=scoring)
        rows.append({"setting": "unsteered", "scoring": scoring, "accuracy": r.accuracy,
                     "CI": f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", "chance": r.chance, **r.by_kind})
    dirs = happiness_direction(lm)
    for alpha in (0.5, 1, 2, 4):
        with crude_steer(lm, dirs, alpha):
            r = evaluate_capability(lm, scoring="text")
        rows.append({"setting": f"steered alpha {alpha}", "scoring": "text", "accuracy": r.accuracy,
                     "CI": f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", "chance": r.chance, **r.by_kind})
    table(rows, "capability set (120 items)")
    return rows


def cmd_report(lm, out: Path, data_root=None, sections=SECTIONS) -> None:
    from steering.judges.emotion import ClassifierJudge, LexiconJudge

    gens = load_generations(out)
    judge, lexicon = ClassifierJudge.load(), LexiconJudge.load()
    want = set(sections)
    result = {"judges": report_judges(judge, lexicon, data_root)} if "judges" in want else {}
    if want & {"gate", "expression", "regimes"}:
        result["gate"], ref = report_gate(lm, judge, gens, data_root)
    if "expression" in want:
        result["expression"] = report_expression(lm, judge, lexicon, gens, ref)
    if "regimes" in want:
        result["regimes"] = report_regimes(lm, judge, lexicon, gens, ref)
    if "llm" in want:
        result["llm_judge"] = report_llm_judge(lm, judge, data_root)
    if "capability" in want:
        result["capability"] = report_capability(lm)
    name = "report.json" if want == set(SECTIONS) else f"report-{'-'.join(sorted(want))}.json"
    (out / name).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {out / name}")


def cmd_fixtures(out: Path) -> None:
    """Copy real replies into the tests' fixtures (steered alpha >= 4; unsteered test half)."""
    gens = load_generations(out)
    folder = Path(__file__).resolve().parents[1] / "tests" / "steering" / "fixtures"
    folder.mkdir(parents=True, exist_ok=True)
    keep = ("condition", "alpha", "prompt_id", "prompt", "reply")
    steered = [g for g in gens if g["condition"].startswith("steer") and g["alpha"] >= 4]
    unique = list({g["reply"]: g for g in steered}.values())  # many replies are identical
    sets = {"degenerate_steered.jsonl": unique,
            "unsteered_test_half.jsonl": _setting(gens, "unsteered", split="test")}
    for name, rows in sets.items():
        with open(folder / name, "w") as fh:
            for g in rows:
                fh.write(json.dumps({k: g[k] for k in keep}) + "\n")
        print(f"wrote {len(rows)} replies to {folder / name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["generate", "report", "fixtures"])
    ap.add_argument("--out", type=Path, default=Path("runs/judges"))
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"report sections to run (default all: {','.join(SECTIONS)})")
    ap.add_argument("--data", help="folder holding goemotions/, dair_emotion/, sev/, lexicons/ "
                                   "(default $EMOPROBE_SHARED_DATA)")
    args = ap.parse_args(argv)
    if args.command == "fixtures":
        cmd_fixtures(args.out)
        return 0
    torch.manual_seed(0)
    from probe.models import load_model

    lm = load_model("smollm2-135m")
    if args.command == "generate":
        cmd_generate(lm, args.out)
    else:
        cmd_report(lm, args.out, args.data, tuple(args.sections.split(",")))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())

"""A SEV folder in miniature for the tests of the sev-* training objectives."""

from __future__ import annotations

import json


def fake_sev(folder, missing=()):
    """A SEV folder in miniature: 4 skeletons over 2 themes, replies in 3 emotions."""
    folder.mkdir(parents=True, exist_ok=True)
    skel, acc = [], []
    for i, theme in enumerate(["Work", "Home", "Work", "Home"]):
        sid = f"{theme.lower()}_{i:02d}"
        skel.append({"theme": theme, "skeleton_id": sid, "scenario": f"I did task {i}.",
                     "event": {v: f"{v} event {i}" for v in ("positive", "neutral", "negative")}})
        for v in ("positive", "neutral", "negative"):
            for e in ("anger", "sadness", "fear"):
                if (sid, v, e) not in missing:
                    acc.append({"skeleton_id": sid, "valence": v, "emotion": e,
                                "gen_text": f"{e} reply to {sid} {v}"})
    (folder / "sev.jsonl").write_text("\n".join(json.dumps(r) for r in skel))
    (folder / "sev_accepted.jsonl").write_text("\n".join(json.dumps(r) for r in acc))
    return folder

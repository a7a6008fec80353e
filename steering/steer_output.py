"""What ``probe steer`` checks before it loads anything, and how it shows and saves replies.

Checked first (no model, no store): a finite ``--strength``; an ``--out`` path that is a file
name, not a prompt taken for one. After the model is known: a warning when ``--strength`` lies
far past the strengths measured as fluent for it (the shipped operating points, selected by
``probe steer-eval`` under a perplexity-ratio limit). Replies are shown side by side with their
headers above a rule, and a reply cut by ``--max-new-tokens`` ends with :data:`LIMIT_MARK`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

from steering.vector import SteeringError

#: Appended to a reply that stopped because it reached ``--max-new-tokens``.
LIMIT_MARK = "[... max_new_tokens reached]"
#: ``--strength`` above this many times the largest fluent one draws a warning.
FAR_PAST = 2.0
#: Without operating points for the model: on SmolLM2, Wang et al.'s recipe turned replies into
#: gibberish from 4 x RMS (docs/steering.md); past that, warn.
BROKEN_RMS = 4.0


def check_strength(strength: float | None, flag: str = "--strength") -> None:
    """``--strength`` (or ``--factor``) must be a finite number (nan/inf would steer every reply
    into NaNs)."""
    if strength is not None and not math.isfinite(strength):
        if flag != "--strength":
            raise SteeringError(f"{flag} must be a finite number, got {strength}; e.g. {flag} 0.5")
        raise SteeringError(f"--strength must be a finite number, got {strength}; e.g. "
                            "--strength 2 (in units of the site's RMS), or leave it out for the "
                            "shipped operating point")


def check_out_path(out: str | None, prompts: list[str], json_flag: bool) -> None:
    """Refuse an ``--out`` that looks like a prompt, and the old ``--json FILE`` form."""
    if out is not None:
        name = Path(out).name
        if " " in name or name.endswith(("?", "!")) or (name.endswith(".") and name != ".."):
            raise SteeringError(f"--out {out!r} looks like a prompt, not a file name; give the "
                                "file first (--out replies.json \"Tell me about your day.\")")
        if Path(out).is_dir():
            raise SteeringError(f"--out {out} is a folder; give a file name such as "
                                f"{Path(out) / 'replies.json'}")
    if json_flag and prompts and prompts[0].endswith(".json") and " " not in prompts[0]:
        raise SteeringError(f"--json prints the JSON to stdout and takes no file; {prompts[0]!r} "
                            f"would be steered as a prompt. To write a file: --out {prompts[0]}")


def fluent_range(alias: str, path=None) -> tuple[float, str] | None:
    """The largest strength (x RMS per layer) of the model's operating points selected as
    fluent, and where it comes from; None when the model has none."""
    from steering.operating_points import load_operating_points

    entry = load_operating_points(path)["models"].get(alias) or {}
    strengths = [p["strength"] for p in entry.get("emotions", {}).values()
                 if p.get("mode", "add") == "add" and p.get("unit", "rms") == "rms"
                 and not p.get("provisional", True)]
    if not strengths:
        return None
    return max(strengths), (f"the operating points of {alias} in steering/operating_points.json, "
                            f"{min(strengths):g}-{max(strengths):g} x RMS, selected by probe steer-eval "
                         "under a perplexity-ratio limit")


def strength_warning(strength: float | None, unit: str, alias: str, path=None) -> str | None:
    """A warning when ``strength`` is far past what was measured as fluent (None otherwise)."""
    if strength is None or unit not in ("rms", "token-rms"):
        return None
    known = fluent_range(alias, path)
    if known is None:
        if abs(strength) <= BROKEN_RMS:
            return None
        return (f"--strength {strength:g} is far past the strengths measured as fluent: {alias} "
                f"has no operating points, and on SmolLM2 replies became gibberish from about "
                f"{BROKEN_RMS:g} x RMS per layer (docs/steering.md); expect broken text")
    top, where = known
    if abs(strength) <= FAR_PAST * top:
        return None
    return (f"--strength {strength:g} is far past the strengths measured as fluent (up to "
            f"{top:g} x RMS per layer: {where}); expect broken text")


def mark(text: str, cut: bool) -> str:
    return f"{text} {LIMIT_MARK}".strip() if cut else text


def _wrap(text: str, col: int) -> list[str]:
    return [ln for part in (text or "(empty)").splitlines()
            for ln in (textwrap.wrap(part, col) or [""])]


def side_by_side(prompts, plain, steered, desc: str, width: int | None = None) -> str:
    """Both replies of each prompt in two columns; headers stand above a rule, so a long
    steering description never runs into the first reply line."""
    width = width or shutil.get_terminal_size((120, 20)).columns
    col = max(30, (width - 3) // 2)
    lines = []
    for p, a, b in zip(prompts, plain, steered):
        head_l, head_r = ["unsteered"], textwrap.wrap(f"steered: {desc}", col)
        lines += [f"\nprompt: {p}", "=" * (2 * col + 3)]
        lines += _columns(head_l, head_r, col)
        lines.append(f"{'-' * col} | {'-' * col}")
        lines += _columns(_wrap(a, col), _wrap(b, col), col)
    return "\n".join(lines)


def _columns(left: list[str], right: list[str], col: int) -> list[str]:
    n = max(len(left), len(right))
    left, right = left + [""] * (n - len(left)), right + [""] * (n - len(right))
    return [f"{lt:<{col}} | {rt}".rstrip() for lt, rt in zip(left, right)]


def emit_record(record: dict, out: str | None, json_flag: bool) -> None:
    """``--json``: the record on stdout; ``--out FILE``: written there (atomically, 0644)."""
    from probe.io import atomic_write

    text = json.dumps(record, indent=1, default=str) + "\n"
    if json_flag:
        sys.stdout.write(text)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        print(f"wrote {path}", file=sys.stderr)

"""Clean/corrupt pairs from stimulus sets: the same scenario, another emotion (or valence).

Our stimuli (``emotion-scenarios``: 64 scenarios x 7 emotions) and SEV (160 skeletons x 3
valences) keep the scenario fixed and change the event, so a pair is two rows of one group
with different labels. Patching needs the two prompts to align token for token:

* ``align="length"`` keeps only pairs whose tokenised prompts (chat template included) have the
  same length, and patches every stimulus position (on SmolLM2 about half of the scenarios
  have a same-length partner for each emotion);
* ``align="suffix"`` keeps every pair and patches only the chat template's suffix after the text
  (``<|im_end|>\\n<|im_start|>assistant\\n`` on SmolLM2), which aligns from the end.

Scenario groups are split into a training half (find the circuit) and a held-out half (check
it): :func:`split_groups`.

>>> pairs = make_pairs(lm, load_dataset("emotion-scenarios"), label="happiness")  # doctest: +SKIP
>>> target, baseline = pairs.noising()      # patch corrupt values into the clean run  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from circuits.baselines import PairBaseline, Positions, check_aligned, take
from probe.errors import EmoprobeError
from probe.forward import Batch, make_batch
from probe.tokens import encode

Align = Literal["length", "suffix"]


class PairError(EmoprobeError, ValueError):
    """Pairs cannot be built as asked (no partner, unknown label, too few groups)."""


@dataclass(frozen=True)
class Pairs:
    """Aligned clean and corrupt batches, one pair per row.

    Attributes:
        clean, corrupt: Batches padded to one width (left padding).
        clean_ids, corrupt_ids, groups, corrupt_labels: One entry per row.
        align: How the pairs align (see the module docstring).
        dropped: Groups that had the label but no partner that aligns.
    """

    clean: Batch
    corrupt: Batch
    clean_ids: tuple[str, ...]
    corrupt_ids: tuple[str, ...]
    groups: tuple[str, ...]
    corrupt_labels: tuple[str, ...]
    align: Align
    dropped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def positions(self) -> Positions:
        return "stimulus" if self.align == "length" else "suffix"

    def noising(self) -> tuple[Batch, PairBaseline]:
        """Run the clean prompts, patch in corrupt values (the effect of losing the emotion)."""
        return self.clean, PairBaseline(self.corrupt, positions=self.positions)

    def denoising(self) -> tuple[Batch, PairBaseline]:
        """Run the corrupt prompts, patch in clean values (the effect of restoring it)."""
        return self.corrupt, PairBaseline(self.clean, positions=self.positions)

    def select(self, rows: Sequence[int]) -> Pairs:
        rows = list(rows)
        pick = lambda t: tuple(t[i] for i in rows)  # noqa: E731
        return Pairs(take(self.clean, rows), take(self.corrupt, rows), pick(self.clean_ids),
                     pick(self.corrupt_ids), pick(self.groups), pick(self.corrupt_labels),
                     self.align, self.dropped)


def split_groups(dataset, *, test_fraction: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Scenario groups split into ``(train, test)`` (deterministic for a seed)."""
    groups = sorted(set(dataset.frame["group"]))
    if len(groups) < 2:
        raise PairError(f"dataset {dataset.name!r} has {len(groups)} group(s); a held-out check "
                        "needs at least two")
    if not 0 < test_fraction < 1:
        raise PairError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test = min(len(groups) - 1, max(1, round(test_fraction * len(groups))))
    test = sorted(groups[i] for i in order[:n_test])
    return sorted(set(groups) - set(test)), test


def rows_of(dataset, label: str, *, target: str | None = None,
            groups: Sequence[str] | None = None):
    """The dataset rows with ``label`` (in ``groups`` if given), as a frame."""
    target = target or dataset.default_target
    classes = dataset.classes(target)
    if label not in classes:
        raise PairError(f"{target} has no class {label!r}; classes are {list(classes)}")
    f = dataset.frame
    keep = f[target] == label
    if groups is not None:
        keep &= f["group"].isin(list(groups))
    if not keep.any():
        raise PairError(f"no rows with {target}={label!r} in the chosen groups")
    return f[keep]


def make_pairs(lm, dataset, *, label: str, target: str | None = None,
               contrast: Sequence[str] | None = None, align: Align = "length",
               groups: Sequence[str] | None = None, seed: int = 0) -> Pairs:
    """One pair per group: a ``label`` row (clean) and another row of the same group (corrupt).

    Args:
        lm: The loaded model (its tokenizer and chat template decide alignment).
        dataset: An :class:`probe.data.schema.EmotionDataset` with scenario groups.
        label: The clean class (``"happiness"``; ``"positive"`` for SEV's valence).
        target: Label column (default: the dataset's).
        contrast: Classes allowed as corrupt (default: every other class).
        align: ``"length"`` or ``"suffix"`` (module docstring).
        groups: Use only these groups (e.g. the training split).
        seed: Picks among several aligned partners.
    """
    if align not in ("length", "suffix"):
        raise PairError(f"align must be 'length' or 'suffix', not {align!r}")
    target = target or dataset.default_target
    clean_rows = rows_of(dataset, label, target=target, groups=groups)
    others = [c for c in dataset.classes(target) if c != label]
    contrast = list(contrast) if contrast is not None else others
    bad = [c for c in contrast if c not in others]
    if bad or not contrast:
        raise PairError(f"contrast classes {bad or contrast} must be other classes of {target}: "
                        f"{others}")
    f = dataset.frame
    cand = f[f[target].isin(contrast) & f["group"].isin(set(clean_rows["group"]))]
    texts = list(clean_rows["text"]) + list(cand["text"])
    lengths = encode(lm.tokenizer, texts, chat_template=lm.chat_template).lengths
    length_of = dict(zip(list(clean_rows["id"]) + list(cand["id"]), lengths))
    rng = np.random.default_rng(seed)
    chosen, dropped = [], []
    for _, row in clean_rows.iterrows():
        partners = cand[cand["group"] == row["group"]]
        if align == "length":
            partners = partners[[length_of[i] == length_of[row["id"]] for i in partners["id"]]]
        if partners.empty:
            dropped.append(row["group"])
            continue
        chosen.append((row, partners.iloc[int(rng.integers(len(partners)))]))
    if not chosen:
        raise PairError(f"no {label!r} row has a partner that aligns ({align}) in "
                        f"{len(clean_rows)} group(s); use align='suffix' or another contrast")
    return _assemble(lm, chosen, target, align, dropped)


def _assemble(lm, chosen, target: str, align: Align, dropped: list[str]) -> Pairs:
    texts = [c["text"] for c, _ in chosen] + [k["text"] for _, k in chosen]
    both = make_batch(lm, texts, padding_side="left")
    n = len(chosen)
    clean, corrupt = take(both, range(n)), take(both, range(n, 2 * n))
    check_aligned(clean, corrupt, "stimulus" if align == "length" else "suffix")
    return Pairs(clean, corrupt, tuple(c["id"] for c, _ in chosen),
                 tuple(k["id"] for _, k in chosen), tuple(c["group"] for c, _ in chosen),
                 tuple(k[target] for _, k in chosen), align, tuple(dropped))

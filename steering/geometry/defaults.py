"""Default options of ``probe geometry``, importable without torch or pandas.

``GeometryConfig`` (:mod:`steering.geometry.run`) takes its field defaults from here, and the
command line shows them in ``--help`` without loading the heavy modules.
"""

from __future__ import annotations

#: Text sources of the default run, in order.
SOURCES = ("goemotions", "dair-emotion", "meld", "emotion-scenarios", "stories")
PER_EMOTION = 24
MIN_WORDS = 4
NEUTRAL = "goemotions"
N_NEUTRAL = 200
STORIES_PER_EMOTION = 2
STORY_TOKENS = 128
N_BOOT = 1000
N_PERM = 2000
N_PCS = 3
BATCH_SIZE = 32
MIN_SHARED = 5
#: The recipe (:class:`steering.geometry.recipe.Recipe`): published defaults.
TOKEN_OFFSET = 0
STORY_OFFSET = 50
NEUTRAL_SHARE = 0.5

"""The model's own behaviour next to its representations (``probe behave``).

Modules, one concept each:

``templates``      prompt templates (several phrasings per task) and candidate answers
``scoring``        label scoring: log-likelihood of every candidate answer after a prompt,
                   one forward over the shared prefix with the candidates batched on its KV cache
``generation``     free generation and the answer parser (coverage reported)
``recognition``    zero-shot recognition of a dataset, keyed to the store's sample ids; for
                   ratings (EmoBank V/A/D) the expected value over the rating tokens
``paired``         cluster-bootstrap CIs for paired comparisons on the same items
``compare``        probe vs behaviour on the same items and folds ("knows more than it says")
``sysprompt``      personas / instructions in the system prompt: representation and answers
``emotionprompt``  EmotionPrompt / NegativePrompt stimuli on a small task set we ship
``figures``        the figures of ``probe behave``
``runfiles``       the run folder (tidy results CSV/JSON, per-item answers, run.json)
``options``        what each experiment is asked to do, as plain values
``cli``, ``run``   the ``probe behave`` subcommand (flags -> options) and what it runs

Nothing is imported here: ``import probe.behaviour`` has no side effects and loads no model.
"""

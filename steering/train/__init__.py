"""Trained steering vectors: fitted through the hook layer's gradients on the model's own replies.

Modules: :mod:`steering.train.data` (training prompts and the model's prompted replies),
:mod:`steering.train.batching` (teacher-forced prompt + reply batches), :mod:`steering.train.objectives`
(prompt distillation, preference, language modelling), :mod:`steering.train.trainer`
(:func:`~steering.train.trainer.train_vector`). docs/steering.md, "Trained vectors".
"""

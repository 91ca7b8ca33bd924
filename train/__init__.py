"""``train-student``: distil a small masked LM from stored teacher top-k outputs with DeepSpeed.

``smash.train.trainer.Trainer`` is the recipe; ``smash.train.cli`` its command line;
``smash.train.demo`` runs the whole pipeline on the bundled tiny models. The few-shot
evaluation lives in ``smash.train.fewshot``.
"""

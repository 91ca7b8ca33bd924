"""What the teacher pass and training share: one meaning for a prompt, a model's answer and
the options both take.

``templates``        LM-BFF's template language: a template means the same tokens everywhere
``adapters``         model families: the answer distribution at a prompt's answer slot
``teacher_targets``  the teacher's top-k and tail mass there (teacher pass and online teacher)
``model_paths``      telling a missing local model folder from a hub name, before loading
``precisions``       the floating-point precisions a run can ask for, by name
``attention_probabilities``  an attention path that returns probabilities before dropout

Data flows one way, ``precompute`` -> ``store`` -> ``kernels`` -> ``train``; this package sits
upstream of both of its users.
"""

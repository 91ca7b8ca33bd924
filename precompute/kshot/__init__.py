"""The downstream few-shot tasks in LM-BFF's layout: task definitions, k-shot splits, reading."""

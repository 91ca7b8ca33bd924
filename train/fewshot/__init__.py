"""Few-shot evaluation of students: LM-BFF prompt-based fine-tuning, zero-shot, fine-tuning."""

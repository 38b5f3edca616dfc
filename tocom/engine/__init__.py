"""Engines: what each pipeline step runs (bench, pretraining, distillation, fine-tuning, evaluation)."""

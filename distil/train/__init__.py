"""Trainers: distillation (`distill.py`), and their state, step, objective, checkpoints and metrics."""

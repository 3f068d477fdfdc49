"""Evaluation: question sets, generation, judges, metrics."""

"""Evaluation: losses, multiple-choice and generation metrics, persona metrics."""

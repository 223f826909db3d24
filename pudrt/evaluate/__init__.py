"""Metrics and the trade-off table."""

from pudrt.evaluate.metrics import attack_success_rate, clean_accuracy, predict

__all__ = ["attack_success_rate", "clean_accuracy", "predict"]

"""Metrics and the trade-off table."""

from pudrt.evaluate.metrics import adversarial_accuracy, attack_success_rate, clean_accuracy, predict

__all__ = ["adversarial_accuracy", "attack_success_rate", "clean_accuracy", "predict"]

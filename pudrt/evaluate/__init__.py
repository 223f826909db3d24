"""Metrics and the trade-off table."""

from pudrt.evaluate.metrics import (
    accuracy,
    adversarial_accuracy,
    agreement,
    attack_success_rate,
    backdoor_rates,
    clean_accuracy,
    predict,
    square_accuracy,
    transferred_accuracy,
)
from pudrt.evaluate.table import trade_off_table

__all__ = ["accuracy", "adversarial_accuracy", "agreement", "attack_success_rate", "backdoor_rates", "clean_accuracy",
           "predict", "square_accuracy", "trade_off_table", "transferred_accuracy"]

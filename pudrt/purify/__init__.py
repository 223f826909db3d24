"""Repair a possibly backdoored model with its own untrusted data: PUD (default), PBE, AdvrBD."""

from pudrt.purify.config import METHODS, PurifyConfig
from pudrt.purify.discovery import TargetEvidence, discover_target
from pudrt.purify.run import PurifyResult, purify
from pudrt.purify.session import Evaluation
from pudrt.purify.teacher import MeanTeacher

__all__ = ["METHODS", "Evaluation", "MeanTeacher", "PurifyConfig", "PurifyResult", "TargetEvidence",
           "discover_target", "purify"]

"""Reference architectures, the registry, and the (logits, features) adapter."""

from pudrt.models import preact_resnet, resnet_small  # noqa: F401  (registers the architectures)
from pudrt.models.adapter import FeatureClassifier, Normalize, Normalized, as_pair, find_linear_head
from pudrt.models.registry import create_model, list_models, register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FeatureClassifier",
    "Normalize",
    "Normalized",
    "as_pair",
    "create_model",
    "find_linear_head",
    "list_models",
    "register_model",
]

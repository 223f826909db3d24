import pytest
import torch
import torch.nn as nn

from pudrt.errors import PudrtError
from pudrt.models import CIFAR10_MEAN, CIFAR10_STD, FeatureClassifier, Normalized, create_model, list_models


@pytest.mark.parametrize("arch, dim", [("resnet8", 64), ("preactresnet18", 512), ("resnet18", 512),
                                       ("mobilenet_v3_small", 1024)])
def test_adapter_returns_logits_and_penultimate_features(arch, dim, images):
    model = Normalized(create_model(arch, 10), CIFAR10_MEAN, CIFAR10_STD).eval()
    adapter = FeatureClassifier(model).eval()
    with torch.no_grad():
        logits, features = adapter(images)
        assert torch.equal(logits, model(images))
    assert features.shape == (len(images), dim)
    head = adapter.head
    with torch.no_grad():
        assert torch.allclose(head(features), logits, atol=1e-5)


def test_adapter_shares_parameters_and_leaves_the_model_alone():
    model = create_model("resnet18", 10).eval()
    adapter = FeatureClassifier(model)
    assert isinstance(model.fc, nn.Linear)  # the original keeps its head
    assert {id(p) for p in adapter.parameters()} == {id(p) for p in model.parameters()}


def test_a_head_that_is_not_linear_is_explained():
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(PudrtError, match="forward_features"):
        FeatureClassifier(model)


def test_registry_knows_ours_and_torchvision():
    names = list_models()
    assert {"resnet8", "preactresnet18", "resnet18"} <= set(names)
    with pytest.raises(PudrtError, match="unknown architecture"):
        create_model("nope", 10)

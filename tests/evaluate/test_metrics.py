import pytest
import torch

from pudrt.attacks import BadNets, create_attack
from pudrt.evaluate import attack_success_rate, backdoor_rates, predict


def test_backdoor_rates_separate_the_trigger_from_the_models_own_errors(badnets_model, clean_model, test_data):
    attack = BadNets()
    infected = backdoor_rates(badnets_model.eval(), test_data, attack)
    assert infected["asr"] == pytest.approx(attack_success_rate(badnets_model, test_data, attack))
    # the trigger, not the model's errors, sends the infected model's answers to the target
    assert infected["asr"] >= 0.8 and infected["asr_untriggered"] <= 0.25, infected
    assert infected["robust_acc"] <= 1 - infected["asr"] + 1e-9
    # a model trained without poisons answers the target about as often with the trigger as without it
    clean = backdoor_rates(clean_model.eval(), test_data, attack)
    assert abs(clean["asr"] - clean["asr_untriggered"]) <= 0.05, clean
    assert clean["robust_acc"] >= 0.4, clean


def test_backdoor_rates_count_as_asr_does(test_data):
    always_target = lambda x: torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()  # noqa: E731
    rates = backdoor_rates(always_target, test_data, BadNets())
    assert rates == {"asr": 1.0, "asr_untriggered": 1.0, "robust_acc": 0.0}
    # all-to-all: the intended class is the next one, counted over every sample
    shift = create_attack("badnets", all_to_all=True)
    _, y = predict(always_target, test_data)
    rates = backdoor_rates(always_target, test_data, shift)
    assert rates["asr"] == rates["asr_untriggered"] == pytest.approx(float((y == 9).float().mean()))
    assert rates["robust_acc"] == pytest.approx(float((y == 0).float().mean()))


def test_backdoor_rates_refuse_predictions_of_other_data(badnets_model, test_data, train_data):
    other = predict(badnets_model.eval(), train_data)
    with pytest.raises(ValueError, match="not this dataset's predictions"):
        backdoor_rates(badnets_model, test_data, BadNets(), clean=other)

"""Poisoning attacks (one file each) and the tools to poison a dataset with them."""

from __future__ import annotations

import dataclasses
import json
import os

from pudrt.attacks.badnets import BadNets
from pudrt.attacks.base import PoisonAttack
from pudrt.attacks.blend import Blend
from pudrt.attacks.sig import SIG
from pudrt.attacks.wanet import WaNet
from pudrt.errors import PudrtError

ATTACKS: dict[str, type[PoisonAttack]] = {a.name: a for a in (BadNets, Blend, WaNet, SIG)}


def create_attack(name: str, **params) -> PoisonAttack:
    """`create_attack("badnets", target=0, ratio=0.1)`; unknown names and bad parameters are PudrtErrors."""
    cls = ATTACKS.get(name.lower())
    if cls is None:
        raise PudrtError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise PudrtError(f"{name} has no parameter(s) {sorted(unknown)}; it takes {sorted(fields)}")
    try:
        return cls(**params)
    except ValueError as err:
        raise PudrtError(str(err)) from None


def attack_from_params(params: dict) -> PoisonAttack:
    """Rebuild an attack from `PoisonAttack.params()` (as stored in poison.json)."""
    params = dict(params)
    return create_attack(params.pop("attack"), **params)


def load_trigger(spec: str) -> PoisonAttack:
    """A `--trigger` value: an attack name (its defaults), or a poison.json or dataset folder from `pudrt poison`."""
    if spec.lower() in ATTACKS:
        return create_attack(spec)
    path = os.path.join(spec, "poison.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise PudrtError(
            f"--trigger {spec!r} is neither an attack ({', '.join(ATTACKS)}) nor a poison.json written by pudrt poison"
        )
    with open(path) as f:
        try:
            return attack_from_params(json.load(f)["params"])
        except (json.JSONDecodeError, KeyError) as err:
            raise PudrtError(f"{path} is not a poison.json written by `pudrt poison` ({err})") from None


__all__ = ["ATTACKS", "SIG", "BadNets", "Blend", "PoisonAttack", "WaNet", "attack_from_params", "create_attack",
           "load_trigger"]

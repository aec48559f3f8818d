"""Pruning policies: none, V²Drop, PyramidDrop, FastV. One file each; see :mod:`.base`."""

from .base import OfPrompt, Policy, kept_count, parse_keep, visual_per_stage
from .fastv import FastV
from .pdrop import PyramidDrop
from .v2drop import SCHEDULES, V2Drop

POLICIES = {"none": Policy, "v2drop": V2Drop, "pdrop": PyramidDrop, "fastv": FastV}


def make_policy(name: str, layers=None, keep=None, schedule: str | None = None) -> Policy:
    """A policy by name, with optional layers and keep schedule (counts, ratios of what is left, or
    percentages of the prompt's visual tokens such as ``"25%"``); ``schedule``
    names V²Drop's defaults (:data:`~.v2drop.SCHEDULES`; the others ignore it)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    if name == "none":
        return Policy()
    kwargs = {}
    if layers is not None:
        kwargs["k" if name == "fastv" else "layers"] = layers[0] if name == "fastv" else layers
    if keep is not None:
        kwargs["keep"] = keep[0] if name == "fastv" else keep
    if name == "v2drop" and schedule is not None:
        kwargs["schedule"] = schedule
    return POLICIES[name](**kwargs)


__all__ = ["POLICIES", "SCHEDULES", "FastV", "OfPrompt", "Policy", "PyramidDrop", "V2Drop", "kept_count", "make_policy", "parse_keep", "visual_per_stage"]

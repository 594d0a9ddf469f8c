"""hollance's BlazeFace checkpoints (`blazeface.pth` legacy pickle, `blazefaceback.pth` zip;
REFERENCE.md §3.4) -> jaxface variables, strictly. The Flax modules carry the checkpoint's names,
so this is the shared by-name map (`jaxface.state_dicts.convert`) against the model's shapes."""
from __future__ import annotations

from typing import Any, Mapping

from jaxface import state_dicts
from jaxface.blazeface.model import BlazeFace


def convert_detector(state_dict: Mapping[str, Any], spec, source: str = 'checkpoint') -> dict[str, Any]:
  """A hollance BlazeFace state dict -> `{'params'}` (BlazeFace has no batch statistics)."""
  template = state_dicts.template(BlazeFace(spec), spec.input_size)
  return state_dicts.convert(state_dicts.normalise_keys(state_dict), template, source=source)

"""Scoring a folder of WIDER FACE prediction files: read, then evaluate, warnings included."""
from __future__ import annotations

import os

from jaxface.evaluation.ground_truth import GroundTruth, load_wider_mat_ground_truth
from jaxface.evaluation.predictions import read_predictions
from jaxface.evaluation.protocol import EvalResult, evaluate


def evaluate_dir(pred_dir: str | os.PathLike, gt: GroundTruth | str | os.PathLike, protocol: str = 'official',
                 strict: bool = False) -> EvalResult:
  """Easy/Medium/Hard AP of the prediction files in `pred_dir`.

  Args:
    pred_dir: folder of `<event>/<name>.txt` files.
    gt: a `GroundTruth`, or the folder of the four official `.mat` files.
    protocol: 'official' (default) or 'python'.
    strict: a missing or malformed prediction file raises `PredictionFormatError` instead of
      being scored as zero detections with a warning.

  Returns:
    The `EvalResult`, with the reader's warnings and notes.
  """
  if not isinstance(gt, GroundTruth):
    gt = load_wider_mat_ground_truth(gt)
  preds, report = read_predictions(pred_dir, gt, protocol, strict=strict)
  return evaluate(preds, gt, protocol, warnings=tuple(report.warnings), notes=tuple(report.notes))

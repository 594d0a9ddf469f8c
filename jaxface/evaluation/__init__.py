"""WIDER FACE evaluation (numpy, CPU): the official MATLAB tool's rules or the Python port's.

    from jaxface.evaluation import evaluate_dir
    result = evaluate_dir('widerface_txt/', 'ground_truth/')      # protocol='official'
    print(result.summary())

Modules: `ground_truth` (the `GroundTruth` structure and the `.mat` loader), `predictions`
(reading and writing `<event>/<name>.txt`), `matching` (which face a detection matches, int32 or
float IoU), `protocol` (PR curves and AP), `widerface` (a folder in, an `EvalResult` out),
`plot` (PR curves as a PNG, with OpenCV).
"""
from __future__ import annotations

from jaxface.evaluation.ground_truth import SETTINGS, GroundTruth, load_wider_mat_ground_truth
from jaxface.evaluation.predictions import (PredictionFormatError, ReadReport, read_prediction_file,
                                            read_predictions, write_prediction_set, write_predictions)
from jaxface.evaluation.protocol import (PROTOCOLS, EvalResult, PRCurve, evaluate, normalise_scores, thresholds,
                                         voc_ap)
from jaxface.evaluation.widerface import evaluate_dir
from jaxface.evaluation.plot import plot_pr_curves

__all__ = [
    'SETTINGS', 'PROTOCOLS', 'GroundTruth', 'load_wider_mat_ground_truth', 'PredictionFormatError',
    'ReadReport', 'read_prediction_file', 'read_predictions', 'write_predictions', 'write_prediction_set',
    'EvalResult', 'PRCurve', 'evaluate', 'evaluate_dir', 'normalise_scores', 'thresholds', 'voc_ap', 'plot_pr_curves',
]

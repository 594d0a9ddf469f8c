"""jaxface: face detectors in JAX/Flax that load the released PyTorch checkpoints."""
from jaxface.detector import Detections, Detector, load_detector

__all__ = ['Detections', 'Detector', 'load_detector']

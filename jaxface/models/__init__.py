"""Face detection models as Flax linen modules."""
from jaxface.models.retinaface import SPECS, RetinaFace, RetinaFaceSpec, retinaface

__all__ = ['SPECS', 'RetinaFace', 'RetinaFaceSpec', 'retinaface']

"""SCRFD (insightface `detection/scrfd`): its training augmentation so far (`augment`); the model,
anchors, converters and detection arrive with the SCRFD detection issue."""

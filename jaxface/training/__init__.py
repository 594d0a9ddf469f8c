"""Training-side pieces that run inside the jitted train step: prior matching, targets, losses."""

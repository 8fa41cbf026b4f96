"""Networks: the Classifier users train, its heads, freezing, the scratch CNNs and weight sources."""

from plantid.models.classifier import Classifier, SeedHead, count_layers, freeze_first_layers
from plantid.models.factory import build_model

__all__ = ["build_model", "Classifier", "SeedHead", "count_layers", "freeze_first_layers"]

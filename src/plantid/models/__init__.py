"""Networks: the Classifier users train, its heads, freezing, the scratch CNNs and weight sources."""

from plantid.models.classifier import Classifier, Ensemble, SeedHead, count_layers, freeze_first_layers, members_of
from plantid.models.factory import build_model

__all__ = ["build_model", "Classifier", "Ensemble", "SeedHead", "count_layers", "freeze_first_layers", "members_of"]

"""Inference: load a trained run, test-time augmentation, the Predictor, export."""

"""The data layer: scan a photo folder, split it, cache decoded pixels, feed batches."""

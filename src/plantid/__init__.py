"""plantid: turn a folder of plant photos (one subfolder per species) into a trained,
evaluated and deployable species classifier."""

__version__ = "0.1.0"

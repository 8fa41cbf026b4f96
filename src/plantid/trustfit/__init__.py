"""What fits the trust a prediction loads, and audits the labels: the temperature, the unknown-photo
detectors and their threshold (fitted on a run's train and val photos), and the label audit.

It runs a trained model, so it sits above `plantid.infer`; what it fits is stored by and loaded
from `plantid.trust`, below `infer`, which every prediction reads without importing this package.
"""

"""What a prediction loads to judge itself: the temperature that calibrates the probabilities and
the out-of-distribution detectors with their threshold ("not one of my species"), and their store
(trust.json, trust.safetensors).

Below `plantid.infer`, which loads it for every prediction; `plantid.trustfit`, above `infer`,
fits what is stored here.
"""

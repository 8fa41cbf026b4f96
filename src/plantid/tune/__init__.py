"""Hyper-parameter search (`plantid tune`, Optuna) and fixed comparisons (`plantid ablate`).

tune sits above train: it builds configs, calls `plantid.train.run.train_run` and reads the runs;
train knows nothing of it.
"""

"""Run tracking and comparison: MLflow logging of every run (mlflow_store, mlflow_logger), the
table of a folder of runs (runs_table) and the side-by-side comparison of runs (compare).

Never imports plantid.train (train imports this package)."""

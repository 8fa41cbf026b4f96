"""The loop after the first model: sort unlabelled photos, review suspicious ones, apply the decisions.

Above `infer` and `trust` (it uses their predictions and the audit), below `cli` and `serve`.
"""

"""Notebook-side presentation: widget forms over configs, log panels, charts and contact sheets.

Nothing here holds pipeline logic: callbacks read ``form.value`` and call a helper from a stage module.
"""

"""Running a job's tiles on a Dask cluster under one shared quota.

``submit`` is the submitting client's side (batches, progress, the summary), ``task`` a
worker's (bulkpix's own worker pool on one batch, in the worker's event loop), ``quota`` the
scheduler's (the run's one Governor) and ``batches`` the pure cut of the plan into tasks.
Imported only for a cluster run: ``distributed`` is an optional dependency (``bulkpix[dask]``).
"""

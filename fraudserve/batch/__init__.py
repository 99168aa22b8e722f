"""Batch scoring of CSV/Parquet files with the served ensemble (`fraud-batch --help`).

Engines: ``local`` (chunked, multi-threaded, resumable; the default), ``spark`` (mapInPandas,
for a cluster) and ``server`` (posts chunks to a deployed service's /predict). All three give
the same output columns and the same scores as the online service for the same rows.
"""

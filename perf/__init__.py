"""Benchmarks of dicomsend against DCMTK and pynetdicom (``python -m perf.bench``).

Not part of the installed package and not collected by the default test run.
"""

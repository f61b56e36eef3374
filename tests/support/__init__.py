"""Shared test machinery: free ports, managed subprocesses, waiting, system requirements.

Fixtures in ``tests/conftest.py`` wrap these; tests may also import them directly
(``from support.procs import ...``) when a fixture does not fit.
"""

"""Exports of an artifact for other runtimes, each verified before it is handed over."""

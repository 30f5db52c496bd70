"""Benchmarks (``make bench``): never run by the tests; speed and memory targets live here."""

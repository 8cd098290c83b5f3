"""Benchmarks (``make bench``): timings on this machine, printed as tables. Not tests."""

"""Benchmarks of the bridge, run by hand (see README.md); never collected by the default test run."""

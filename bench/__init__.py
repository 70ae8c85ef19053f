"""Benchmarks that write JSON figures."""

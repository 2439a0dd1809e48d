"""Benchmarks: commands that measure and print, and record their results in BENCHMARKS.md."""

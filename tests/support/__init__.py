"""Helpers shared by the tests and the benchmarks: mounts, S3 servers, stubs."""

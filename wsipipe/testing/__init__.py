"""Test support, not public API: generated slides for wsipipe's own tests and benchmarks.

Nothing in the pipeline imports this package; its functions may change without notice.
"""

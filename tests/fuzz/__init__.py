"""A structure-aware mutation fuzzer for every format surgery reads.

`python -m tests.fuzz --minutes 30` runs it (see RELIABILITY.md); tests/test_reliability_fuzz.py
runs a short seeded pass as part of the suite.
"""

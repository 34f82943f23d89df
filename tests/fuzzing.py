"""Counts of the cases each fuzz test generated (each test adds one per case), printed at the end
of the test run."""

from collections import Counter

CASES: Counter = Counter()

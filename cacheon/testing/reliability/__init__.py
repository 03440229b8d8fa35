"""The reliability suite: faults injected around a real daemon, and the table of what it did."""

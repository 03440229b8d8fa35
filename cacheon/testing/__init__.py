"""Real local services, toy servers and fake provider APIs for the tests and the demo (loopback only)."""

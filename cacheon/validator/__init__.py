"""The validator daemon: poll the chain, run rounds on a rented pod, score, publish, set weights."""

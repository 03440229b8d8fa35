"""Reaching the pod: the SSH transport, installing the agent, readiness, the model and the
report handoff. The pod is untrusted; everything that comes back from it is checked here."""

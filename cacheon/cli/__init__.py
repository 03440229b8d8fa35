"""Command-line entry points: cacheon-validator, cacheon-miner, cacheon-agent."""

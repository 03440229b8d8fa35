"""Everything that touches the chain: the one place the bittensor SDK is imported (DESIGN.md §2).

Wallets, the client, commitments, weights and the simulated devnet live here, so the rest of the
validator and the CLIs speak to the chain only through these modules."""

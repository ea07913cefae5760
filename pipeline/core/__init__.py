"""The engine: the intake (the chain's source), the chain, the ledger that settles every
spore, and the wiring snapshot the stages read. Knows config and steps, no feature."""

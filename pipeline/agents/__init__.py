"""Agents as handlers see them: the context, class agents and their state, orchestration
(gather, sequence), process pools, knowledge references, peer descriptions."""

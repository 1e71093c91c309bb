"""torchrun's agent, rendezvous, process table, console writer and reports."""

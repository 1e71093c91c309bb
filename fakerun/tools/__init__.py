"""Companion commands: fakerun-smi, fakerun-tail, fakerun-plan."""

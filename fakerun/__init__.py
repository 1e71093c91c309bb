"""fakerun: a drop-in torchrun that runs a simulated LLM training job."""

"""Each framework's own reading of its launch arguments and config files (the job they describe)."""

"""Pure renderers: event -> text (progress bars, GPU grid, NCCL lines, metric lines)."""

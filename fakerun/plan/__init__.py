"""The scaling-law planner: compute-optimal model and data for a budget, and the job that trains it."""

"""Per-framework tables and rules for reading a real launch script's arguments and config files."""

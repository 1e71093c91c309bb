"""What each training framework's own tables and rules make of its arguments and config files."""

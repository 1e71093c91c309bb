"""What each training framework's own names, tables and defaults describe (models, flavors, configs)."""

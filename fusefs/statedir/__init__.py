"""The state directory: every file under STATE and who writes it."""

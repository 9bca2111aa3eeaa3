"""The policy file: its model, its loader and the calendar arithmetic of its terms."""

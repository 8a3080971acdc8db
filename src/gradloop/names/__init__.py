"""Names: losses, optimizers and metrics given by name, and what each name means."""

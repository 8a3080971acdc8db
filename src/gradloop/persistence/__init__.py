"""Persistence: the resume point, checkpoint files, run locks, clean stops on signals."""

"""Offline tools that train, export and check the default minillm model (need torch)."""

"""Reusable Beam transforms, DoFns and ModelHandlers for dimflow (no job logic here)."""

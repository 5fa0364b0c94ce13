"""Saving, loading and exporting compact models (hf_l0.hub)."""

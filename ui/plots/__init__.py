"""Matplotlib figures drawn from a comparison's trace (object-oriented API, no pyplot global state)."""

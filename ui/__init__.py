"""Gradio UI of the H2-Cache comparison app: settings, validation, handlers, plots and layout.

The library (h2cache/) never imports this package.
"""

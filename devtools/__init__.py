"""Tools for developing the app, not used by the server: a local server, a browser driver, the screenshot, a
load test and the FLUX.1 GPU check (``python -m devtools.<name> --help``)."""

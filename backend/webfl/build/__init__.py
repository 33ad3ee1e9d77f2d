"""Set-up's build of what the browser and the server load (``python -m webfl.build``).

Stdlib and NumPy only. Each step takes its paths as arguments (``paths`` holds the
defaults for this checkout) and skips work whose output is already up to date.
"""

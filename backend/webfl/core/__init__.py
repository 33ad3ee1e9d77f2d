"""The learning core: model math, local training, data partitions, update codecs,
the wire protocol and the volunteer session.

Pure NumPy and the standard library, no server imports: the server imports it and
the browser loads the very same code as a wheel (CPython 3.11+ and Pyodide 0.27.7).
"""

"""webfl: federated learning in the browser, in Python.

``webfl.core`` is the learning core (pure NumPy, runs natively and in Pyodide);
``webfl.server`` is the Starlette round server; ``webfl.simulate`` drives it with
Python volunteers.
"""

__version__ = "0.1.0"

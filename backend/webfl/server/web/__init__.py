"""The web surface: everything a browser or an operator's script reaches over HTTP.

One concept a module: ``assets`` (static, versioned and pre-gzipped files), ``pages``
(page rendering and its Content-Security-Policy), ``signin`` (the admin page's login and
logout forms), ``config_api`` (``/api/config``), ``admin_api`` (the admin JSON API),
``bodies`` (request bodies bounded while they stream, JSON parsed strictly), ``headers``
(security headers on every response) and ``services`` (the typed object handlers get
the engine, store, settings and signers from).
"""

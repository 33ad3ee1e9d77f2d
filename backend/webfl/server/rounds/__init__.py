"""The round, in parts: see ``server/engine.py`` for the map."""

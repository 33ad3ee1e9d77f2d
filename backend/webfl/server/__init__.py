"""The round server: Starlette app, round engine, coordination and storage."""

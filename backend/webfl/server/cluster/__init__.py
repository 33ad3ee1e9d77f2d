"""Several ``webfl serve`` members, one federation, on Redis (``--redis``).

``lease``: the leader lease and its fencing token. ``bus``: the Redis-backed
``Coordinator`` (frames to volunteers on any member). ``relay``: a follower's
volunteers' frames to the leader over a Redis Stream. ``member``: one member's
lifecycle (lease, heartbeat, role changes, the model blobs).
"""

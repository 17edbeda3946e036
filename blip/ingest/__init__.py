"""
What happens to a blip once it is read: stamped, handed to the live hub,
batched into the database, spooled while the database is away, and the
record of when this node was listening.
"""

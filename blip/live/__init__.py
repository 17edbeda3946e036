"""
Live points for whoever waits: the hub of parked long-polls and
listeners, and the points other nodes announce through the database.
"""

"""
PostgreSQL: the connection pool, every SQL statement, the schema and the
upgrades of older layouts, the meters table, and the embedded cluster.
"""

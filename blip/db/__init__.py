"""
PostgreSQL: everything that talks to the database, and all of its SQL.

- :mod:`~blip.db.pool`: the connections, kept open through outages, and
  the service that prepares the database; :mod:`~blip.db.txpg`: what they
  rely on in txpostgres beyond its documented use;
- :mod:`~blip.db.schema`: preparing the database (``schema.sql``), with
  :mod:`~blip.db.layouts` (which layout it has), :mod:`~blip.db.upgrades`
  (the steps from the original's) and :mod:`~blip.db.program` (the
  transaction the daemon and the ``blip`` command both run);
- the queries, each set on the pool: :mod:`~blip.db.queries` (what they
  all share), :mod:`~blip.db.readings` (the ingest's writes, NOTIFY and
  LISTEN, catching up), :mod:`~blip.db.legacy` (the original's routes),
  :mod:`~blip.db.v1` (``/api/v1``), :mod:`~blip.db.node_state` (the meters
  and ingest periods tables);
- :mod:`~blip.db.meter_table`: the meters table kept in step with the
  registry of meters;
- :mod:`~blip.db.sync_store`: the ``blip`` command's statements, blocking;
- :mod:`~blip.db.embedded`: the private cluster.
"""

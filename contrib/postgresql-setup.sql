-- PostgreSQL for blipserver: a role and a database it owns. blipserver
-- creates its tables itself, and upgrades them, at every start. Run as
-- PostgreSQL's superuser; running it again changes nothing:
--
--   sudo -u postgres psql -f postgresql-setup.sql
--
-- Variables (psql -v name=value): user (default blipserver), db (default
-- blipserver), password (none: the role then logs in over the local Unix
-- socket as the system user of the same name, "peer" authentication;
-- nodes on other machines need one, and a line in pg_hba.conf such as
--   host  blipserver  blipserver  10.0.0.0/8  scram-sha-256).
--
-- LISTEN and NOTIFY, which carry live points between nodes, need no
-- privilege beyond connecting.

\set ON_ERROR_STOP on
\if :{?user}
\else
\set user blipserver
\endif
\if :{?db}
\else
\set db blipserver
\endif

SELECT format('CREATE ROLE %I LOGIN', :'user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec

\if :{?password}
ALTER ROLE :"user" PASSWORD :'password';
\endif

SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8'' TEMPLATE template0', :'db', :'user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec

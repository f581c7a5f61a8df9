-- Run once by the postgres image on a new data directory (docker-compose.yml
-- mounts it into /docker-entrypoint-initdb.d). The runtime login owns
-- nothing; `slipway db migrate --grant-to slipway_app` lets it act as the
-- writer role. Change the password for anything but a developer machine.
CREATE ROLE slipway_app LOGIN PASSWORD 'slipway_app' NOSUPERUSER NOCREATEDB NOCREATEROLE;

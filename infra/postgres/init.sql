-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER role. One role owns both databases: a local stack, one password to manage.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;

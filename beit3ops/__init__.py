"""Platform integration: the `beit3` command, local S3 store, job launcher, model registration."""

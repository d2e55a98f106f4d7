"""The Redis layer: the only code that sends commands. The store and its Functions library, plans and their
drivers, the catalogue, principals and ACL rules, build watching, stats and metrics, the embedded server and the
dispatcher. Imports only from :mod:`embcache.core` (see docs/design.md)."""

"""The pure core: no I/O, no Redis. Errors, keys, codecs and validation, filters, log positions, the snapshot
format and the search engine over loaded bases. Imports nothing from the floors above it (see docs/design.md)."""

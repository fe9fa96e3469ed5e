"""HDF5 outcome cache: schema, reader, writer, validator, synthetic generator."""

from cache.schema import SCHEMA_VERSION, CacheError

__all__ = ["SCHEMA_VERSION", "CacheError"]

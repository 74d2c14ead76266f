"""Storage layer: the warehouse on fsspec/object_store URIs and the table formats in it."""

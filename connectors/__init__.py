"""Connectors: sources that land data in the warehouse (files now; databases, IoT, media next)."""

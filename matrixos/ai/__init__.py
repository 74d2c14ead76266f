"""Embedders, chunking and the RAG pipeline."""

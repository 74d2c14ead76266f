"""Sources that MatrixOS ingests from: files, databases, IoT feeds and multimodal data."""

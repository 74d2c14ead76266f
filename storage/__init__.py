"""Storage layer: the warehouse on fsspec/object_store URIs and the table formats in it."""

import os

# delta-rs and lance log from Rust straight to stderr (env_logger): a missing credential printed
# five `WARN aws_config …` lines on a user's terminal before the error we raise says it better.
# Only errors are shown unless the user asks for more (RUST_LOG=warn, LANCE_LOG=debug, …).
os.environ.setdefault("RUST_LOG", "error")
os.environ.setdefault("LANCE_LOG", "error")

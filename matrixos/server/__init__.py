"""``matrixos serve``: the HTTP statement API (``http``), the PostgreSQL wire (``pg*``), the
statements they run (``statements``) and the remote SDK (``client``).

Kept free of imports: ``mx.connect("http://…")`` loads only ``client``, and the server's
dependencies (FastAPI, uvicorn) load only where a server starts.
"""

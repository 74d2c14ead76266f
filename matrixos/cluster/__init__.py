"""MatrixOS as a cluster on one machine: the topology of ``docker/compose.yaml`` (S3, the catalog
database, a Ray head with CPU and GPU workers, the server, an MQTT broker) started as local
processes by ``matrixos cluster up`` (see docs/cluster.md)."""

"""Local runs: the embedded pipeline, real mode on Kafka and FerretDB, the device simulator."""

"""Real Apache Kafka (KRaft) on loopback for development, tests and the demo."""

"""The only code that talks to Kafka: clients, the consume loop, the sink, offsets."""

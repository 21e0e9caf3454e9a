"""Pure logic: no Kafka clients, no environment reads, no clock reads (time is passed in)."""

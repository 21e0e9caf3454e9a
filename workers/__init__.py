"""scorestream: streaming inference and model monitoring workers on Kafka."""

__version__ = "0.1.0"

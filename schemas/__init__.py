"""Wire schemas, installed as package data of workers (see workers/schemas.py)."""

"""`python -m workers.example_data FILE`: write the example customer table."""

import sys

from workers.example_data import customers

customers().to_csv(sys.argv[1] if len(sys.argv) > 1 else "customers.csv", index=False)

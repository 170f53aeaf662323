"""Reports: result records (JSON), tables and progress in the terminal, CSV and PNG plots."""

from .console import console, print_table, progress, write_csv
from .outputs import write_experiment
from .record import make_record, versions, write_json

__all__ = ["console", "make_record", "print_table", "progress", "versions", "write_csv", "write_experiment",
           "write_json"]

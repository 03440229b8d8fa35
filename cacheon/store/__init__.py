"""Validator state: SQLite (db) and, later, S3 objects."""

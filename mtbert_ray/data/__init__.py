"""Data in, tokenized shards out (no Ray): sources (files, GLUE, MIND, transfer text), tokenization, the content-
addressed shards and views, their column names and stored float formats.
"""

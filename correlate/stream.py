"""Streaming correlation over Kafka (``hopscope correlate``): being written by the streaming engineer.

Do not edit: another engineer owns this module, correlate/stream_cli.py and tests/correlate/test_stream*.py.
"""

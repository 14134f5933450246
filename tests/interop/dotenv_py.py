"""Prints what python-dotenv reads from the file argv[1]: {"off": {...}, "default": {...}}.

"off" is interpolate=False, "default" the library's default (interpolate=True).
"""
import json
import sys

from dotenv import dotenv_values

path = sys.argv[1]
json.dump(
    {"off": dotenv_values(path, interpolate=False), "default": dotenv_values(path)},
    sys.stdout,
)

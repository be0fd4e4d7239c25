"""The package version, in a module of its own so every stage can record it without importing the package root."""

VERSION = "0.2.0"

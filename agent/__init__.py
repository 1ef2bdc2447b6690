"""Vigil: a GPU node health agent for Kubernetes."""

__version__ = "0.1.0"

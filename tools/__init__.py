"""Offline developer tools: run with the scratch TensorFlow venv, never imported by the daemon."""

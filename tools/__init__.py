"""Offline developer tools, never imported by the daemon: the model builder (run with a scratch
TensorFlow venv) and mutation testing (run with the project's venv by `make mutation`)."""

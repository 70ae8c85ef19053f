"""Tests of iomt-gateway."""

"""Helpers to deploy the flows and run the local stack."""

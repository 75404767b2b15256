"""Evaluation of a trained bundle: above the export and the gateway, whose search and captioner it runs."""

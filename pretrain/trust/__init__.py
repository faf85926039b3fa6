"""Helpers for what crosses a trust boundary, kept at the bottom of the package so that every
layer (data, config, tracking, models, cluster) can use them: redaction of secrets in text,
URIs and settings before anything is logged, stored or shown."""

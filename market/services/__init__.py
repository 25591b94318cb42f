"""Market data access and domain logic: keyword-only functions over a SQLAlchemy session that raise domain errors.

Nothing here knows about HTTP; `market.api` maps the errors to status codes.
"""

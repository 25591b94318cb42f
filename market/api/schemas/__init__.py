"""Request and response bodies of the market API (pydantic; all extra fields forbidden on input)."""

"""The OpenAI-compatible API (`/openai/v1`): request schemas, errors in OpenAI's shape, and turning a pipeline
run's events into chat / text completions (stop strings, EOS, logprobs, usage). Routes: market/api/routes/openai_v1.py.
"""

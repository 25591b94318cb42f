"""Real-model tests reuse the runtime fixtures (staked worker keys on the session Anvil)."""

from tests.runtime.conftest import staked  # noqa: F401  (a fixture, used by name)

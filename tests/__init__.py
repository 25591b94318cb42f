"""The test suite as a package, so test folders named like product packages (tests/market) never shadow them."""

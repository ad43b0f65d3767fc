"""The test suite is a package so that test files share helpers with ``from tests.conftest import ...``."""

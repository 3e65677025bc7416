"""Plain helpers the tests import: constants, data pickers, fakes and small checks, split by subject. Nothing here is
a fixture: the shared fixtures live in conftest.py and in the plugin modules of plugins/, which conftest.py
registers. conftest.py has pytest rewrite the asserts of this package, so its checks fail as readably as a test's."""

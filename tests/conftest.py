"""Test configuration shared by every test module."""


def pytest_configure(config):
    # Naming grokinterp's warning class in the ini filterwarnings would make pytest import
    # grokinterp while it reads its configuration, before jaxtyping installs the import hook
    # that type-checks the package, and jaxtyping then stops the run. Added here, the filter is
    # read only when each test starts.
    config.addinivalue_line("filterwarnings", "error::grokinterp.GrokinterpWarning")

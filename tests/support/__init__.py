"""What the tests share that is not a fixture: reference implementations, tiny models, the
headless browser and TensorBoard server drivers, distributed launchers (see conftest.py for the
fixtures)."""

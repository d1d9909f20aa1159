"""Programs that tests/e2e/test_compose.py runs inside the deployment's containers."""

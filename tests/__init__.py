import pytest

# Plain asserts in the helpers of tests/support report their operands as asserts in test
# modules do (registered before any of them is imported).
pytest.register_assert_rewrite("tests.support")

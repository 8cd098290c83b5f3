from components.regression_check.component import regression_check

__all__ = ["regression_check"]

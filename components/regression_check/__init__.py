from components.regression_check.component import regression_check, regression_runs

__all__ = ["regression_check", "regression_runs"]
